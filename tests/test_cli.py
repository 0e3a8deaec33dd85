"""The `hf-varinit` command line: plan, errors as one line with exit code 1, the demo's plumbing."""

import json
import os
import subprocess
import sys

import pytest

from hf_varinit.cli.main import COMMANDS, main


def _python_m(*args: str) -> subprocess.CompletedProcess:
    """``python -m hf_varinit <args>`` in a fresh interpreter, offline."""
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    return subprocess.run([sys.executable, "-m", "hf_varinit", *args], capture_output=True, text=True, env=env,
                          timeout=300)


def test_plan_prints_the_per_tensor_table(capsys):
    assert main(["plan", "--model", "gpt2", "--n-layer", "12", "--n-embd", "256", "--rule", "kaiming"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0].split()[:8] == ["name", "role", "layer", "slice", "fan_in", "fan_out", "distribution", "std"]
    q = next(line.split() for line in out if "h.11.attn.c_attn.weight" in line and " q " in line)
    assert q[3:6] == ["[:,", "0:256]", "256"]
    c_fc = next(line.split() for line in out if "h.0.mlp.c_fc.weight" in line)
    assert c_fc[3:5] == ["256", "1024"] and float(c_fc[6]) == pytest.approx((2 / 256) ** 0.5, rel=1e-4)


def test_plan_json_covers_every_tensor_of_a_llama(capsys):
    assert main(["plan", "--model", "llama", "--n-layer", "2", "--n-embd", "64", "--n-head", "4",
                 "--n-kv-heads", "2", "--rule", "xavier", "--format", "json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    k = next(r for r in rows if r["key"] == "layers.1.k")
    assert (k["fan_in"], k["fan_out"]) == (64, 32)
    assert k["std"] == pytest.approx((2 / (64 + 32)) ** 0.5)


@pytest.mark.parametrize(
    "argv, message",
    [
        (["plan", "--rule", "bogus"], "unknown init rule 'bogus'; valid rules:"),
        (["plan", "--model", "mlp", "--n-head", "4"], "--n-head do(es) not apply to --model mlp"),
        (["plan", "--model", "gpt2", "--n-embd", "100", "--n-head", "3"], "cannot build --model gpt2"),
        (["report", "/nonexistent/run", "--output", "/tmp/x"], "cannot build a report"),
        (["pretrain", "--config", "no-such-config"], "does not exist; give a YAML path or a bundled config name"),
    ],
)
def test_bad_input_is_one_line_and_exit_code_1(capsys, argv, message):
    assert main(argv) == 1
    err = capsys.readouterr().err.strip()
    assert message in err and len(err.splitlines()) == 1


def test_python_m_hf_varinit_runs_plan():
    proc = _python_m("plan", "--model", "gpt2", "--n-layer", "2", "--n-embd", "64", "--rule", "kaiming",
                     "--format", "json")
    assert proc.returncode == 0, proc.stderr
    rows = json.loads(proc.stdout)
    q = next(r for r in rows if r["key"] == "layers.1.q")
    assert (q["fan_in"], q["fan_out"]) == (64, 64)
    assert q["std"] == pytest.approx((2 / 64) ** 0.5)


def test_python_m_hf_varinit_prints_one_error_line_and_exits_1():
    proc = _python_m("plan", "--rule", "bogus")
    assert proc.returncode == 1
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("hf-varinit plan: error: unknown init rule 'bogus'")


def test_every_command_has_help(capsys):
    with pytest.raises(SystemExit) as exc:
        main(["--help"])
    assert exc.value.code == 0
    listing = capsys.readouterr().out
    for name in COMMANDS:
        assert name in listing
        with pytest.raises(SystemExit) as exc:
            main([name, "--help"])
        assert exc.value.code == 0 and f"hf-varinit {name}" in capsys.readouterr().out
