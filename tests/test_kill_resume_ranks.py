"""Multi-process faults on CPU (2 gloo ranks): nothing hangs, nothing is lost.

- A rank killed, or hung, with no launcher to tear the group down (the ranks are started here one by one, with
  RANK / WORLD_SIZE / MASTER_ADDR / MASTER_PORT, no torchrun agent): the survivor exits 1 within the collective
  timeout with one line naming the step and the missing rank.
- A write that fails on one rank: every rank stops with the same line, and no checkpoint is committed half-written.
- A rank SIGKILLed under torchrun during a sharded (``fully_shard``) checkpoint save: the relaunch with ``--resume``
  starts from the newest complete checkpoint on every rank and ends bit-identical (``scripts/kill_resume.py``).
"""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch.distributed as dist

from hf_varinit.errors import WriteError
from hf_varinit.train.checkpoint import complete_checkpoints
from hf_varinit.train.faults import all_ranks_write, is_collective_failure, missing_ranks

ROOT = Path(__file__).resolve().parents[1]
TEST_CONFIG = str(ROOT / "hf_varinit" / "configs" / "gpt2-tiny-test.yaml")
RUN = ["--checkpoint-every", "3", "--record-every", "1", "--log-every", "1", "--keep-last", "5", "--eval-every",
       "none", "--disable-tqdm"]
LOST = re.compile(r"^hf-varinit pretrain: error: rank (\d) of 2 was lost after step (\d+): (.+); rank (\d) stops too\. "
                  r"Restart all 2 processes with --resume to continue from the newest complete checkpoint in (.+)$")
gloo = pytest.mark.skipif(not (dist.is_available() and dist.is_gloo_available()), reason="needs torch.distributed gloo")


@pytest.fixture(scope="module")
def cache_dir(tmp_path_factory) -> str:
    return str(tmp_path_factory.mktemp("tokenizer_cache"))


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# ----------------------------------------------------------------------------- the pieces, in one process


def test_a_collective_failure_is_told_from_other_errors():
    closed = RuntimeError("[gloo/transport/tcp/pair.cc:553] Connection closed by peer [127.0.0.1]:8397")
    timed_out = RuntimeError("[gloo/transport/tcp/unbound_buffer.cc:78] Timed out waiting 5000ms for recv operation")
    assert is_collective_failure(closed) and is_collective_failure(timed_out)

    class CheckpointException(Exception):  # torch.distributed.checkpoint's: rank -> the exception it raised
        failures = {1: closed}

    wrapped = ValueError("while saving")
    wrapped.__cause__ = CheckpointException()
    assert is_collective_failure(wrapped)
    assert not is_collective_failure(RuntimeError("unexpected pos 576 vs 534"))
    assert not is_collective_failure(WriteError("cannot write x: Timed out waiting for the disk"))


def test_the_missing_ranks_are_those_that_do_not_report():
    assert missing_ranks(0, 2, "step3") == (1,) and missing_ranks(1, 2, "step3") == (0,)
    store = dist.TCPStore("127.0.0.1", 0, is_master=True, wait_for_workers=False)
    store.set("hf_varinit/alive/step3/2", "1")  # rank 2 survived too; rank 1 never reports
    assert missing_ranks(0, 3, "step3", store=store, wait_s=0.3) == (1,)


class OneProcess:
    num_processes = 1


def test_all_ranks_write_turns_a_write_failure_into_one_error_and_cleans_up(tmp_path):
    cleaned = []
    with pytest.raises(WriteError, match=r"^cannot write the checkpoint .*step_3: No space left on device "
                                         r"\[Errno 28: ENOSPC\]; .*then continue with --resume$") as caught:
        with all_ranks_write(OneProcess(), tmp_path / "step_3", what="the checkpoint",
                             then=lambda: "continue with --resume", cleanup=lambda: cleaned.append(1)):
            raise OSError(28, "No space left on device")
    assert cleaned == [1] and isinstance(caught.value.__cause__, OSError)
    with pytest.raises(KeyError):  # not a write failure: propagates as it is, nothing cleaned
        with all_ranks_write(OneProcess(), tmp_path, what="x", cleanup=lambda: cleaned.append(2)):
            raise KeyError("bug")
    with all_ranks_write(OneProcess(), tmp_path, what="x", cleanup=lambda: cleaned.append(3)):
        pass
    assert cleaned == [1]


# ----------------------------------------------------------------------------- two ranks, started by hand


def start_ranks(tmp_path: Path, out: Path, cache_dir: str, *extra: str, program: list[str] | None = None,
                fully_shard: bool = False) -> list[subprocess.Popen]:
    """Two ranks of ``python -m hf_varinit pretrain``, each started by hand (no launcher); output in tmp_path."""
    port = _free_port()
    procs = []
    for rank in range(2):
        env = {**os.environ, "HF_HUB_OFFLINE": "1", "TQDM_DISABLE": "1", "PYTHONPATH": str(ROOT),
               "OMP_NUM_THREADS": "1", "RANK": str(rank), "LOCAL_RANK": str(rank), "WORLD_SIZE": "2",
               "LOCAL_WORLD_SIZE": "2", "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port)}
        if fully_shard:
            env["HF_VARINIT_FULLY_SHARD"] = "1"
        cmd = [sys.executable, *(program or ["-m", "hf_varinit"]), "pretrain", "--config", TEST_CONFIG,
               "--output-dir", str(out), "--cache-dir", cache_dir, *RUN, *extra]
        procs.append(subprocess.Popen(cmd, env=env, stdout=(tmp_path / f"rank{rank}.out").open("w"),
                                      stderr=(tmp_path / f"rank{rank}.err").open("w"), cwd=tmp_path))
    return procs


def wait_for_step(out: Path, step: int, procs: list[subprocess.Popen], timeout: float = 240) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and all(p.poll() is None for p in procs):
        try:
            lines = (out / "metrics.jsonl").read_text().splitlines()
            if lines and json.loads(lines[-1])["step"] >= step:
                return
        except (OSError, ValueError, KeyError):
            pass
        time.sleep(0.05)
    raise AssertionError(f"no step {step} logged: exit codes {[p.poll() for p in procs]}")


def stderr_lines(tmp_path: Path, rank: int) -> list[str]:
    return [line for line in (tmp_path / f"rank{rank}.err").read_text().splitlines() if line.strip()]


def stop_all(procs: list[subprocess.Popen]) -> None:
    for p in procs:
        if p.poll() is None:
            p.kill()
        p.wait()


@pytest.mark.slow
@pytest.mark.multiprocess
@gloo
def test_a_killed_rank_stops_the_survivor_with_one_line_naming_the_step_and_the_rank(tmp_path, cache_dir):
    out = tmp_path / "run"
    procs = start_ranks(tmp_path, out, cache_dir, "--max-steps", "500", "--collective-timeout", "20")
    try:
        wait_for_step(out, 4, procs)
        procs[0].send_signal(signal.SIGKILL)  # the main rank, which also holds the rendezvous store
        killed = time.monotonic()
        code = procs[1].wait(timeout=20 + 30)  # within the timeout + slack; gloo sees the closed connection at once
        delay = time.monotonic() - killed
    finally:
        stop_all(procs)
    lines = stderr_lines(tmp_path, 1)
    assert code == 1 and len(lines) == 1, lines
    match = LOST.match(lines[0])
    assert match, lines[0]
    assert (match.group(1), match.group(3), match.group(4)) == ("0", "its connection closed (the process died)", "1")
    assert int(match.group(2)) >= 4 and match.group(5) == str(out / "checkpoints")
    assert delay < 20


@pytest.mark.slow
@pytest.mark.multiprocess
@gloo
def test_a_hung_rank_stops_the_survivor_after_the_collective_timeout(tmp_path, cache_dir):
    out = tmp_path / "run"
    procs = start_ranks(tmp_path, out, cache_dir, "--max-steps", "500", "--collective-timeout", "10",
                        fully_shard=True)
    try:
        wait_for_step(out, 4, procs)
        procs[1].send_signal(signal.SIGSTOP)  # alive but silent: only the timeout can tell
        stopped = time.monotonic()
        code = procs[0].wait(timeout=10 + 30)
        delay = time.monotonic() - stopped
    finally:
        stop_all(procs)
    lines = stderr_lines(tmp_path, 0)
    assert code == 1 and len(lines) == 1, lines
    match = LOST.match(lines[0])
    assert match, lines[0]
    assert (match.group(1), match.group(4)) == ("1", "0")
    assert match.group(3) == "it did not answer within --collective-timeout 10 s (hung or gone)"
    assert 8 < delay < 10 + 30


FAULTY_RANK_1 = """
import os, sys
import torch

real_save = torch.save

def save(obj, f, *args, **kwargs):  # rank 1's part of checkpoint step_6 hits a full disk (torch.save's own error)
    if os.environ["RANK"] == "1" and ".tmp_step_6" in str(f):
        raise RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 576 vs 534")
    return real_save(obj, f, *args, **kwargs)

torch.save = save
from hf_varinit.cli import main
sys.exit(main(sys.argv[1:]))
"""


@pytest.mark.slow
@pytest.mark.multiprocess
@gloo
def test_a_write_that_fails_on_one_rank_stops_every_rank_with_the_same_line(tmp_path, cache_dir):
    out = tmp_path / "run"
    script = tmp_path / "faulty_rank_1.py"
    script.write_text(FAULTY_RANK_1)
    procs = start_ranks(tmp_path, out, cache_dir, "--max-steps", "8", "--collective-timeout", "30",
                        program=[str(script)])
    try:
        codes = [p.wait(timeout=240) for p in procs]
    finally:
        stop_all(procs)
    lines = [stderr_lines(tmp_path, rank) for rank in (0, 1)]
    expected = (f"hf-varinit pretrain: error: rank 1 of 2: cannot write the checkpoint "
                f"{out / 'checkpoints' / 'step_6'}: [enforce fail at inline_container.cc:672] . unexpected pos 576 vs "
                f"534; ")
    assert codes == [1, 1] and all(len(x) == 1 and x[0].startswith(expected) for x in lines), lines
    assert lines[0] == lines[1]
    assert lines[0][0].endswith("then continue with --resume (from step_3, the newest complete checkpoint, "
                                "left intact)")
    assert [step for step, _ in complete_checkpoints(out)] == [3]
    assert sorted(p.name for p in (out / "checkpoints").iterdir()) == ["step_3"]  # no staging folder left
    assert not list(out.rglob(".*"))


@pytest.mark.slow
@pytest.mark.multiprocess
@gloo
def test_a_rank_killed_under_torchrun_during_a_sharded_save_resumes_bit_identical(tmp_path, cache_dir):
    cmd = [sys.executable, str(ROOT / "scripts" / "kill_resume.py"), "--nproc", "2", "--shard", "fully_shard",
           "--launcher", "torchrun", "--kills", "1", "--max-steps", "4", "--checkpoint-every", "2",
           "--record-every", "1", "--seed", "3", "--workdir", str(tmp_path), "--cache-dir", cache_dir]
    proc = subprocess.run(cmd, env={**os.environ, "PYTHONPATH": str(ROOT)}, capture_output=True, text=True,
                          timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert re.search(r"kill 1/1 .*: killed rank \d of 2 after step \d during a checkpoint save", proc.stdout)
    assert "OK: bit-identical weights and statistics (2 ranks, fully_shard, torchrun: 1 kills survived" in proc.stdout
