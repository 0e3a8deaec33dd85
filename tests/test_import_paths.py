"""Nothing works by import side effect: every built-in rule resolves whichever module was imported first, and an
init with a plain rule loads nothing of the report stack (pandas, matplotlib) beyond what transformers loads itself.

Each check runs in a fresh interpreter, since this test process has imported everything already.
"""

import ast
import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "hf_varinit"
BUNDLED = "gpt2-12l-tiny-qkv-dynamics"
HEAVY = ("pandas", "scipy", "matplotlib")


def _fresh(code: str) -> dict:
    """Run ``code`` in a new interpreter (offline); it prints one JSON line, returned parsed."""
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONWARNINGS": "ignore"}
    done = subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True, text=True, env=env,
                          timeout=300, cwd=PACKAGE.parent.parent)
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


@pytest.mark.slow
@pytest.mark.parametrize("entry", ["hf_varinit.init.patch", "hf_varinit.init.rules", "hf_varinit",
                                   "hf_varinit.record.recorder", "hf_varinit.train.loop"])
def test_every_built_in_rule_resolves_from_any_first_import(entry):
    found = _fresh(f"""
        import json, importlib
        importlib.import_module({entry!r})
        from hf_varinit.init.patch import from_config
        from hf_varinit.init.rules import get_rule, list_rules
        from transformers import GPT2Config
        config = GPT2Config(n_layer=12, n_embd=128, n_head=4, vocab_size=4096, n_positions=128)
        model = from_config(config, rule="optimal:report={BUNDLED}", seed=0)
        print(json.dumps({{"rules": list_rules(), "optimal": type(get_rule("optimal:report={BUNDLED}")).__name__,
                          "q_std": model.transformer.h[0].attn.c_attn.weight[:, :128].std().item()}}))
    """)
    assert {"hf", "normal", "trunc_normal", "xavier", "kaiming", "lecun", "gpt2", "optimal"} <= set(found["rules"])
    assert found["optimal"] == "OptimalRule"
    assert 0.005 < found["q_std"] < 0.2  # drawn from the report's V(W), not left at the model's default


def test_a_plain_init_loads_nothing_of_the_report_stack():
    code = """
        import json, sys
        {setup}
        from transformers import AutoModelForCausalLM, GPT2Config
        config = GPT2Config(n_layer=2, n_embd=32, n_head=2, vocab_size=64, n_positions=16)
        {build}
        print(json.dumps(sorted(m for m in {heavy} if m in sys.modules)))
    """
    baseline = _fresh(code.format(setup="", build="AutoModelForCausalLM.from_config(config)", heavy=HEAVY))
    ours = _fresh(code.format(setup="import hf_varinit as hv",
                              build="hv.from_config(config, rule='kaiming', seed=0)", heavy=HEAVY))
    assert set(ours) <= set(baseline), f"hf_varinit loaded {sorted(set(ours) - set(baseline))}"
    assert "pandas" not in ours and "matplotlib" not in ours


def test_import_hf_varinit_loads_no_torch():
    loaded = _fresh("""
        import json, sys
        import hf_varinit
        print(json.dumps(sorted(m for m in ("torch", "transformers", "pandas") if m in sys.modules)))
    """)
    assert loaded == []


def _module_level_registrations(path: Path) -> list[str]:
    """Calls of ``register*`` functions or ``*.register(...)`` made when the module is imported."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    found = []
    for statement in tree.body:
        if isinstance(statement, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            continue
        for node in ast.walk(statement):
            if isinstance(node, ast.Call):
                func = node.func
                name = func.attr if isinstance(func, ast.Attribute) else getattr(func, "id", "")
                if name.startswith("register"):
                    found.append(f"{path.name}:{node.lineno} {name}")
    return found


def test_no_module_registers_anything_when_imported():
    # every built-in (rules, architectures, plugins) resolves lazily by name; nothing fills a registry on import
    offenders = [hit for path in sorted(PACKAGE.rglob("*.py")) for hit in _module_level_registrations(path)]
    assert offenders == []
