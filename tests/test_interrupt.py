"""Ctrl-C and SIGTERM: the run finishes its step, checkpoints, says how to continue, and exits 130 / 143.

In-process tests raise the signal at a known step (deterministic); the subprocess tests send a real signal to
``python -m hf_varinit pretrain`` and continue it with the command it printed.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

import hf_varinit.train.loop as loop
from hf_varinit.cli.pretrain import parse_options
from hf_varinit.record.stats_file import load_stats
from hf_varinit.train.checkpoint import complete_checkpoints, is_complete
from hf_varinit.train.interrupt import StopSignals, continue_command, invoked_command
from hf_varinit.train.loop import run_pretrain

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "scripts"))
from kill_resume import _children  # noqa: E402  (the script's /proc walk: a process's direct children)

ROOT = Path(__file__).resolve().parents[1]
TEST_CONFIG = str(ROOT / "hf_varinit" / "configs" / "gpt2-tiny-test.yaml")
RUN = ["--max-steps", "8", "--checkpoint-every", "5", "--record-every", "1", "--log-every", "1", "--keep-last", "5",
       "--dropout", "0.1"]  # dropout on: the restored RNG state matters


@pytest.fixture(scope="module")
def cache_dir(tmp_path_factory) -> str:
    return str(tmp_path_factory.mktemp("tokenizer_cache"))


def pretrain(out: Path, cache_dir: str, *extra: str, **kwargs):
    argv = ["--config", TEST_CONFIG, "--output-dir", str(out), "--cache-dir", cache_dir, *RUN, *extra]
    return run_pretrain(parse_options(argv), **kwargs)


def assert_same_run(a: Path, b: Path) -> None:
    """Final weights and the statistics of two output folders are bit-identical."""
    wa, wb = load_file(a / "final" / "model.safetensors"), load_file(b / "final" / "model.safetensors")
    assert wa.keys() == wb.keys() and all(torch.equal(wa[k], wb[k]) for k in wa)
    sa, sb = load_stats(a / "variance.safetensors"), load_stats(b / "variance.safetensors")
    assert np.array_equal(sa.step, sb.step)
    for name in ("mean", "var", "second_moment"):
        assert np.array_equal(getattr(sa, name), getattr(sb, name)), name


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory, cache_dir) -> Path:
    out = tmp_path_factory.mktemp("uninterrupted")
    pretrain(out, cache_dir)
    return out


def signal_during_step(monkeypatch, signum: int, step: int) -> None:
    """Deliver ``signum`` to this process in the middle of optimizer step ``step`` (1-based)."""
    real = loop.train_step

    def train_step(accelerator, model, optimizer, scheduler, batches, options, state):
        if state.step + 1 == step:
            signal.raise_signal(signum)  # the handler only notes it: this step still runs to its end
        return real(accelerator, model, optimizer, scheduler, batches, options, state)

    monkeypatch.setattr(loop, "train_step", train_step)


# ----------------------------------------------------------------------------- in process


def test_sigterm_finishes_the_step_checkpoints_and_names_the_continue_command(tmp_path, cache_dir, monkeypatch,
                                                                               capsys):
    signal_during_step(monkeypatch, signal.SIGTERM, 3)
    before = signal.getsignal(signal.SIGTERM)
    result = pretrain(tmp_path, cache_dir, command="hf-varinit pretrain --config x --resume")
    assert result.stopped_by == signal.SIGTERM and result.exit_code == 143 and result.step == 3
    assert signal.getsignal(signal.SIGTERM) is before  # the run's handlers are gone
    assert [step for step, _ in complete_checkpoints(tmp_path)] == [3]
    assert load_stats(tmp_path / "variance.safetensors").step.tolist() == [0, 1, 2, 3]
    assert not (tmp_path / "final").exists()
    out = capsys.readouterr().out
    assert "stopped at step 3; continue with: hf-varinit pretrain --config x --resume\n" in out


@pytest.mark.slow
def test_resuming_a_stopped_run_ends_bit_identical(tmp_path, cache_dir, monkeypatch, uninterrupted, capsys):
    signal_during_step(monkeypatch, signal.SIGINT, 7)  # past the checkpoint at step 5: a new one at 7
    stopped = pretrain(tmp_path, cache_dir)
    assert (stopped.step, stopped.exit_code) == (7, 130)
    monkeypatch.undo()
    resumed = pretrain(tmp_path, cache_dir, "--resume")
    assert resumed.resumed_from.name == "step_7" and resumed.exit_code == 0
    assert f"resuming from step 7 (checkpoint {tmp_path / 'checkpoints' / 'step_7'})" in capsys.readouterr().out
    assert_same_run(tmp_path, uninterrupted)


def test_stop_handlers_are_restored_and_a_signal_only_sets_the_flag():
    before = signal.getsignal(signal.SIGINT)
    with StopSignals() as stop:
        assert not stop.requested()
        signal.raise_signal(signal.SIGINT)  # no KeyboardInterrupt
        assert stop.requested() and stop.exit_code == 130
    assert signal.getsignal(signal.SIGINT) is before


def test_continue_command_appends_resume_once():
    assert continue_command(["hf-varinit", "pretrain", "--output-dir", "runs/a b"]) == \
        "hf-varinit pretrain --output-dir 'runs/a b' --resume"
    assert continue_command("hf-varinit pretrain --resume --lr 1e-3") == "hf-varinit pretrain --lr 1e-3 --resume"
    assert continue_command("hf-varinit pretrain --resume true --lr 1") == "hf-varinit pretrain --lr 1 --resume"


def test_invoked_command_is_what_the_user_typed(monkeypatch):
    monkeypatch.delenv("ACCELERATE_DYNAMO_BACKEND", raising=False)
    main = str(ROOT / "hf_varinit" / "__main__.py")
    monkeypatch.setattr(sys, "argv", [main, "pretrain", "--config", "c"])
    monkeypatch.setattr(sys, "orig_argv", ["python", "-m", "hf_varinit", "pretrain", "--config", "c"])
    assert invoked_command() == ["python", "-m", "hf_varinit", "pretrain", "--config", "c"]
    monkeypatch.setattr(sys, "argv", ["/nowhere/bin/hf-varinit", "pretrain", "--lr", "1"])
    monkeypatch.setattr(sys, "orig_argv", ["/nowhere/bin/python", "/nowhere/bin/hf-varinit", "pretrain", "--lr", "1"])
    assert invoked_command() == ["/nowhere/bin/hf-varinit", "pretrain", "--lr", "1"]
    monkeypatch.setattr(sys, "argv", ["pytest", "tests"])
    assert invoked_command() is None  # not a pretrain command line: the caller falls back to the options


# ----------------------------------------------------------------------------- real signals, subprocesses


def _env() -> dict[str, str]:
    return {**os.environ, "HF_HUB_OFFLINE": "1", "TQDM_DISABLE": "1", "PYTHONPATH": str(ROOT),
            "OMP_NUM_THREADS": "1"}


def _last_step(out: Path) -> int:
    try:
        lines = (out / "metrics.jsonl").read_text().splitlines()
        return json.loads(lines[-1])["step"] if lines else 0
    except (OSError, ValueError, KeyError, IndexError):
        return 0


def _command(out: Path, cache_dir: str, max_steps: int) -> list[str]:
    return [sys.executable, "-m", "hf_varinit", "pretrain", "--config", TEST_CONFIG, "--output-dir", str(out),
            "--cache-dir", cache_dir, *RUN, "--max-steps", str(max_steps)]


def run_and_signal(out: Path, cache_dir: str, signum: int, max_steps: int, after_step: int = 2) -> tuple[int, str]:
    """Start ``python -m hf_varinit pretrain``, send ``signum`` once it logged ``after_step``; (exit code, output)."""
    cmd = _command(out, cache_dir, max_steps)
    proc = subprocess.Popen(cmd, env=_env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    deadline = time.monotonic() + 240
    while _last_step(out) < after_step and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    proc.send_signal(signum)
    output, _ = proc.communicate(timeout=240)
    return proc.returncode, output


@pytest.mark.slow
def test_sigterm_exits_143_and_its_continue_command_ends_bit_identical(tmp_path, cache_dir):
    out, reference = tmp_path / "run", tmp_path / "reference"
    code, output = run_and_signal(out, cache_dir, signal.SIGTERM, max_steps=16)
    assert code == 143, output[-3000:]
    assert "Traceback" not in output
    match = re.search(r"stopped at step (\d+); continue with: (.+)\n", output)
    assert match, output[-3000:]
    step, command = int(match.group(1)), shlex.split(match.group(2))
    assert step >= 2 and is_complete(out / "checkpoints" / f"step_{step}")
    assert load_stats(out / "variance.safetensors").step.tolist() == list(range(step + 1))
    assert command[:3] == [sys.executable, "-m", "hf_varinit"] and command[-1] == "--resume"
    finish = subprocess.run(command, env=_env(), capture_output=True, text=True, timeout=240)
    assert finish.returncode == 0, finish.stdout[-3000:] + finish.stderr[-3000:]
    assert f"resuming from step {step}" in finish.stdout
    ref = subprocess.run(_command(reference, cache_dir, 16), env=_env(), capture_output=True, text=True, timeout=240)
    assert ref.returncode == 0, ref.stderr[-3000:]
    assert_same_run(out, reference)


@pytest.mark.slow
def test_sigint_exits_130_without_a_traceback(tmp_path, cache_dir):
    code, output = run_and_signal(tmp_path, cache_dir, signal.SIGINT, max_steps=200, after_step=1)
    assert code == 130, output[-3000:]
    assert "Traceback" not in output and "KeyboardInterrupt" not in output
    step = int(re.search(r"stopped at step (\d+); continue with: ", output).group(1))
    assert is_complete(tmp_path / "checkpoints" / f"step_{step}")



@pytest.mark.multiprocess
@pytest.mark.slow
@pytest.mark.skipif(not Path("/proc").is_dir(), reason="finds the worker processes through /proc")
def test_a_signal_to_one_rank_stops_every_rank_at_the_same_step(tmp_path, cache_dir):
    cmd = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2", "-m",
           "hf_varinit", "pretrain", "--config", TEST_CONFIG, "--output-dir", str(tmp_path), "--cache-dir", cache_dir,
           *RUN, "--max-steps", "200"]
    proc = subprocess.Popen(cmd, env=_env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    deadline = time.monotonic() + 240
    while _last_step(tmp_path) < 2 and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    workers = sorted(_children(proc.pid))
    assert len(workers) == 2, workers
    os.kill(workers[-1], signal.SIGTERM)  # one rank only: the others learn of it through the per-step reduce
    output, _ = proc.communicate(timeout=240)
    match = re.search(r"stopped at step (\d+); continue with: (.+)\n", output)
    assert match, output[-4000:]
    step = int(match.group(1))
    assert [s for s, _ in complete_checkpoints(tmp_path)] == [step]
    assert sorted(p.name for p in (tmp_path / "checkpoints" / f"step_{step}").glob("random_states_*")) == \
        ["random_states_0.pkl", "random_states_1.pkl"]  # both ranks wrote their part of the same step
    assert "accelerate" in match.group(2) and "--num_processes 2" in match.group(2)
