"""The README's Python works for a pip user: every ```python block runs, in order and in one interpreter (a later
block may use what an earlier one made), from a folder outside the repository and offline. So the README can only
use what an install has: bundled configs and reference reports by name, never ``model_cards/...`` paths.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

README = Path(__file__).resolve().parents[1] / "README.md"
FENCE = re.compile(r"^```python\n(.*?)^```", re.DOTALL | re.MULTILINE)


def python_blocks(text: str) -> list[str]:
    """The ```python blocks of a markdown text, in order."""
    return FENCE.findall(text)


def run_blocks(blocks: list[str], cwd: Path) -> subprocess.CompletedProcess:
    """Run ``blocks`` one after the other in one fresh interpreter in ``cwd``; a failure names the block."""
    script = ["import sys", "_blocks = []"]
    for block in blocks:
        script.append(f"_blocks.append({block!r})")
    script += ["for _i, _code in enumerate(_blocks):",
               "    try:",
               "        exec(compile(_code, f'README.md python block {_i + 1}', 'exec'), globals())",
               "    except BaseException:",
               "        print(f'README.md python block {_i + 1} of {len(_blocks)} failed', file=sys.stderr)",
               "        raise"]
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME")}
    env.update(HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1", MPLBACKEND="Agg", TQDM_DISABLE="1",
               TOKENIZERS_PARALLELISM="false")
    return subprocess.run([sys.executable, "-c", "\n".join(script)], cwd=cwd, env=env, capture_output=True, text=True,
                          timeout=600)


def test_python_blocks_are_found_in_order():
    text = "intro\n```python\na = 1\n```\n```bash\nls\n```\n```python\nprint(a)\n```\n"
    assert python_blocks(text) == ["a = 1\n", "print(a)\n"]


def test_a_failing_block_is_named(tmp_path):
    proc = run_blocks(["x = 1\n", "raise ValueError('nope')\n"], tmp_path)
    assert proc.returncode != 0 and "README.md python block 2 of 2 failed" in proc.stderr


@pytest.mark.slow
def test_every_python_block_of_the_readme_runs_outside_the_repository(tmp_path):
    blocks = python_blocks(README.read_text(encoding="utf-8"))
    assert blocks, "README.md has no ```python block"
    proc = run_blocks(blocks, tmp_path)
    assert proc.returncode == 0, f"{proc.stderr[-4000:]}"
