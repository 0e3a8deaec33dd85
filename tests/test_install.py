"""What a user of a regular (non-editable) install gets: bundled configs and reports by name, the entry points,
and a command line whose ``--help`` does not load torch.

The wheel test builds the package, installs it into a fresh virtual environment that cannot see this checkout
(the dependencies come from the development environment through a ``.pth`` file, so it stays offline), and runs
the commands a new user runs, from a folder outside the repository.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import site
import subprocess
import sys
from pathlib import Path

import pytest
from transformers import GPT2Config

import hf_varinit as hv
from hf_varinit.errors import ReportError

ROOT = Path(__file__).resolve().parents[1]
REPORT = "gpt2-12l-tiny-qkv-dynamics"  # the reference report bundled with the package
# the 12-layer tiny GPT-2 that the bundled report measured
TINY = "GPT2Config(n_layer=12, n_embd=128, n_head=4, vocab_size=4096, n_positions=128)"


def _env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME")}
    env.update(HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1", TOKENIZERS_PARALLELISM="false", MPLBACKEND="Agg",
               TQDM_DISABLE="1", ACCELERATE_USE_CPU="1")
    return env


def _run(argv: list[str], cwd: Path, timeout: int = 600) -> subprocess.CompletedProcess:
    proc = subprocess.run(argv, cwd=cwd, env=_env(), capture_output=True, text=True, timeout=timeout)
    assert proc.returncode == 0, f"{' '.join(map(str, argv))} exited {proc.returncode}:\n{proc.stdout}\n{proc.stderr}"
    return proc


# ----------------------------------------------------------------------------- fast: bundled names, lazy help


def test_a_bundled_report_loads_by_name_from_any_directory(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    report = hv.VarianceReport.load(REPORT)
    assert report.model_type == "gpt2" and report.n_layer == 12
    assert report.variances()["layers.0.q"] > 0


def test_an_existing_folder_wins_over_a_bundled_name(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / REPORT).mkdir()  # a local folder of that name that is not a report: it is what gets loaded
    with pytest.raises(ReportError, match="not a variance report"):
        hv.VarianceReport.load(REPORT)


def test_the_optimal_rule_takes_a_bundled_report_by_name(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    config = GPT2Config(n_layer=12, n_embd=128, n_head=4, vocab_size=4096, n_positions=128)
    model = hv.from_config(config, rule=f"optimal:report={REPORT}", seed=0)
    rows = {r.key: r.std for r in hv.init_plan(model, f"optimal:report={REPORT}")}
    v = hv.VarianceReport.load(REPORT).variances()["layers.3.q"]
    assert math.isclose(rows["layers.3.q"], math.sqrt(v), rel_tol=1e-6)


@pytest.mark.parametrize("argv", [["--help"], ["sweep", "--help"], ["compare", "--help"], ["calibrate", "--help"]])
def test_help_does_not_import_torch_or_transformers(tmp_path, argv):
    code = ("import runpy, sys\n"
            f"sys.argv = ['hf_varinit', *{argv!r}]\n"
            "try:\n    runpy.run_module('hf_varinit', run_name='__main__')\n"
            "except SystemExit as exc:\n    assert exc.code == 0, exc.code\n"
            "print(sorted(m for m in ('torch', 'transformers') if m in sys.modules))\n")
    proc = _run([sys.executable, "-c", code], cwd=tmp_path)
    assert "usage: hf-varinit" in proc.stdout
    assert proc.stdout.strip().splitlines()[-1] == "[]", proc.stdout


def test_public_names_load_on_first_use_with_the_optimal_rule_registered(tmp_path):
    code = ("import sys, hf_varinit as hv\n"
            "assert 'torch' not in sys.modules\n"
            "from hf_varinit import get_rule\n"
            "assert 'optimal' in hv.list_rules() and 'from_config' in dir(hv)\n"
            "print('ok')\n")
    assert _run([sys.executable, "-c", code], cwd=tmp_path).stdout.strip() == "ok"


# ----------------------------------------------------------------------------- slow: a real wheel install


def _build_wheel(tmp_path: Path) -> Path:
    """The wheel of a clean copy of the package (the checkout's build/ and egg-info stay untouched)."""
    src = tmp_path / "src"
    src.mkdir()
    for name in ("pyproject.toml", "README.md", "LICENSE"):
        if (ROOT / name).is_file():
            shutil.copy2(ROOT / name, src / name)
    shutil.copytree(ROOT / "hf_varinit", src / "hf_varinit", ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    dist = tmp_path / "dist"
    _run([sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps", "--no-build-isolation", "--no-index",
          "-w", str(dist), str(src)], cwd=tmp_path)
    (wheel,) = dist.glob("hf_varinit-*.whl")
    return wheel


def _fresh_venv(tmp_path: Path, wheel: Path) -> Path:
    """A new venv with only the wheel installed; the dependencies come from this environment via a .pth file."""
    venv = tmp_path / "venv"
    _run([sys.executable, "-m", "venv", "--without-pip", str(venv)], cwd=tmp_path)
    python = venv / "bin" / "python"
    (purelib,) = {Path(p) for p in json.loads(_run(
        [str(python), "-c", "import json, sysconfig; print(json.dumps([sysconfig.get_path('purelib')]))"],
        cwd=tmp_path).stdout)}
    deps = [p for p in site.getsitepackages() if Path(p).is_dir()]
    (purelib / "_dev_dependencies.pth").write_text("\n".join(deps) + "\n")  # paths only: no .pth of theirs runs
    _run([str(python), "-m", "pip", "install", "--quiet", "--no-deps", "--no-index", "--ignore-installed",
          str(wheel)], cwd=tmp_path)
    return venv


@pytest.mark.slow
def test_a_wheel_install_runs_outside_the_checkout(tmp_path):
    venv = _fresh_venv(tmp_path, _build_wheel(tmp_path))
    python, cli = str(venv / "bin" / "python"), str(venv / "bin" / "hf-varinit")
    user = tmp_path / "elsewhere"
    user.mkdir()

    where = _run([python, "-c", "import hf_varinit; print(hf_varinit.__file__)"], cwd=user).stdout.strip()
    assert Path(where).is_relative_to(venv), f"the installed package is not the one imported: {where}"

    assert "pretrain" in _run([python, "-m", "hf_varinit", "--help"], cwd=user).stdout

    tiny = ["--config", "gpt2-tiny-test", "--max-steps", "2", "--checkpoint-every", "none"]
    _run([cli, "pretrain", *tiny, "--output-dir", "by-name"], cwd=user)  # a bundled config by name
    assert (user / "by-name" / "variance.safetensors").is_file()

    _run([python, "-m", "accelerate.commands.accelerate_cli", "launch", "--num_processes", "1", "--num_machines", "1",
          "--mixed_precision", "no", "--dynamo_backend", "no", "-m", "hf_varinit", "pretrain", *tiny,
          "--output-dir", "launched"], cwd=user)
    assert (user / "launched" / "variance.safetensors").is_file()

    code = ("import math, hf_varinit as hv\nfrom transformers import GPT2Config\n"
            f"model = hv.from_config({TINY}, rule='optimal:report={REPORT}', seed=0)\n"
            f"v = hv.VarianceReport.load('{REPORT}').variances()['layers.0.q']\n"
            "w = model.transformer.h[0].attn.c_attn.weight[:, :128]\n"
            "print(round(float(w.var()) / v, 2))\n")
    ratio = float(_run([python, "-c", code], cwd=user).stdout.strip().splitlines()[-1])
    assert 0.9 < ratio < 1.1, ratio  # initialised at s0^2 = V(W) of the bundled report
