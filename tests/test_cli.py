"""The `hf-varinit` command line: plan, errors as one line with exit code 1, the demo's plumbing."""

import json
import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from transformers import GPT2Config

import hf_varinit as hv
from hf_varinit.cli.main import COMMANDS, main
from hf_varinit.record.stats_file import save_stats
from hf_varinit.report.report import VarianceReport


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


@pytest.mark.slow
def test_python_m_hf_varinit_runs_plan():
    proc = _python_m("plan", "--model", "gpt2", "--n-layer", "2", "--n-embd", "64", "--rule", "kaiming",
                     "--format", "json")
    assert proc.returncode == 0, proc.stderr
    rows = json.loads(proc.stdout)
    q = next(r for r in rows if r["key"] == "layers.1.q")
    assert (q["fan_in"], q["fan_out"]) == (64, 64)
    assert q["std"] == pytest.approx((2 / 64) ** 0.5)


@pytest.mark.slow
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


# --- plan --report, and the card's "initialise a model from this report" commands -----------------------------
V_QKV = {"q": 1e-4, "k": 4e-4, "v": 9e-4}


def _report(folder: Path, n_embd: int = 32) -> Path:
    """A saved report of a small GPT-2 whose Q/K/V sit at the plateaus V_QKV (2.5e-3 elsewhere) from the start."""
    config = GPT2Config(n_layer=3, n_embd=n_embd, n_head=4, vocab_size=96, n_positions=16, bos_token_id=0,
                        eos_token_id=0)
    recorder = hv.VarianceRecorder(hv.from_config(config, "kaiming", seed=0), every=1, rule="kaiming")
    plateau = np.array([[V_QKV.get(k.rsplit(".", 1)[-1], 2.5e-3) for k in recorder.keys]] * 20, dtype=np.float32)
    save_stats(folder, step=np.arange(20) * 10, mean=np.zeros_like(plateau), var=plateau, second_moment=plateau,
               tracked=recorder.tracked(), metadata=recorder.metadata())
    return VarianceReport.from_stats(folder).save(folder / "report")


def test_plan_report_takes_the_architecture_and_the_rule_from_the_report(tmp_path, capsys):
    report = _report(tmp_path)
    assert main(["plan", "--report", str(report), "--format", "json"]) == 0
    rows = {r["key"]: r for r in json.loads(capsys.readouterr().out)}
    assert {f"layers.{i}.q" for i in range(3)} <= set(rows) and "layers.3.q" not in rows  # the report's depth
    assert (rows["embedding"]["fan_in"], rows["embedding"]["fan_out"]) == (96, 32)  # and its vocabulary, width
    assert rows["layers.2.k"]["std"] == pytest.approx(V_QKV["k"] ** 0.5)
    assert f"V(W) from report {report}" in rows["layers.2.k"]["note"]
    assert main(["plan", "--report", str(report), "--rule", "kaiming", "--format", "json"]) == 0
    rows = {r["key"]: r for r in json.loads(capsys.readouterr().out)}
    assert rows["layers.2.k"]["std"] == pytest.approx((2 / 32) ** 0.5)


@pytest.mark.parametrize("extra, message", [
    (["--model", "gpt2"], "--model gpt2 and --report"),
    (["--input-size", "6"], "--input-size do(es) not apply with --report"),
])
def test_plan_report_refuses_a_second_architecture(tmp_path, capsys, extra, message):
    assert main(["plan", "--report", str(_report(tmp_path)), *extra]) == 1
    err = capsys.readouterr().err.strip()
    assert message in err and len(err.splitlines()) == 1


def _card_blocks(readme: str, language: str) -> list[str]:
    return re.findall(rf"```{language}\n(.*?)```", readme, flags=re.S)


def test_the_cards_commands_run_as_printed(tmp_path, monkeypatch, capsys):
    """The card's "initialise a model from this report" snippets, copied out of README.md, run from another folder."""
    report = _report(tmp_path / "run", n_embd=128)
    readme = (report / "README.md").read_text()
    python = next(b for b in _card_blocks(readme, "python") if "from_report" in b)
    cli = next(line for b in _card_blocks(readme, "bash") for line in b.splitlines() if "plan --report" in line)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    namespace: dict = {}
    exec(python, namespace)
    model = namespace["model"]
    weight = model.transformer.h[2].attn.c_attn.weight.detach()
    for i, role in enumerate("qkv"):
        assert weight[:, i * 128 : (i + 1) * 128].var().item() == pytest.approx(V_QKV[role], rel=0.1)
    argv = shlex.split(cli)
    assert argv[0] == "hf-varinit" and main([*argv[1:], "--format", "json"]) == 0
    rows = {r["key"]: r for r in json.loads(capsys.readouterr().out)}
    assert rows["layers.0.v"]["std"] == pytest.approx(V_QKV["v"] ** 0.5)
