"""Fault injection: SIGKILL a pretraining run (or one rank of it) at random moments, resume each time, compare with
an uninterrupted run.

One reference run trains to ``--max-steps`` without interruption. The faulty run is started, killed with SIGKILL
``--kills`` times (seeded moments: after a random number of logged steps, and at least once while a checkpoint is
being written, i.e. while ``checkpoints/.tmp_step_N`` exists), and resumed with ``--resume`` after each kill. At the
end the final weights and the variance records must be bit-identical to the reference, with no duplicate or missing
recorded step.

With ``--nproc 2`` every run has two ranks (DDP, or ``--shard fully_shard``: torch's FSDP2, sharded checkpoints) and
each kill hits ONE rank, chosen at random; the other must exit by itself: torn down by ``torchrun`` (``--launcher
torchrun``), or, with the ranks started one by one and nothing to tear them down (``--launcher manual``), through the
run's own guard (``--collective-timeout``; gloo also fails at once when a peer's connection closes). The exit delay
(the kill to the last process gone) is reported for each kill. Each relaunch must resume from the newest complete
checkpoint (the ranks check they agree; the script checks the main rank's ``resuming from step N`` line).

    python scripts/kill_resume.py --kills 5 --max-steps 40 --seed 1
    python scripts/kill_resume.py --nproc 2 --shard fully_shard --kills 10 --max-steps 40
    python scripts/kill_resume.py --nproc 2 --shard ddp --launcher manual --collective-timeout 20 --kills 5
"""

from __future__ import annotations

import argparse
import json
import os
import random
import re
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
PRETRAIN_MODULE = ["-m", "hf_varinit", "pretrain"]
RESUMING = re.compile(r"resuming from step (\d+) \(checkpoint ")


def _options(args, output_dir: Path, resume: bool) -> list[str]:
    cmd = ["--config", args.config, "--output-dir", str(output_dir), "--max-steps", str(args.max_steps),
           "--checkpoint-every", str(args.checkpoint_every), "--record-every", str(args.record_every),
           "--log-every", "1", "--keep-last", "2", "--dropout", str(args.dropout), "--disable-tqdm",
           "--collective-timeout", str(args.collective_timeout)]
    if args.cache_dir:
        cmd += ["--cache-dir", args.cache_dir]
    return cmd + (["--resume"] if resume else [])


def _command(args, output_dir: Path, resume: bool) -> list[str]:
    """The single-process command (kept for callers of the 1-process harness)."""
    return [sys.executable, *PRETRAIN_MODULE, *_options(args, output_dir, resume)]


def _env(args=None) -> dict[str, str]:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TQDM_DISABLE": "1", "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1",
           "PYTHONUNBUFFERED": "1"}  # a killed run's "resuming from step N" line is in its log
    if args is not None and args.nproc > 1 and args.shard == "fully_shard":
        env["HF_VARINIT_FULLY_SHARD"] = "1"
    return env


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _children(pid: int) -> list[int]:
    found = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == pid:
            found.append(int(stat.parent.name))
    return sorted(found)


def _rank_of(pid: int) -> int | None:
    """The RANK in a process's environment (torchrun sets it for each worker)."""
    try:
        environ = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
    except OSError:
        return None
    found = [v[5:] for v in environ if v.startswith(b"RANK=")]
    return int(found[0]) if found else None


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


class Launch:
    """One run: 1 process, ``torchrun --nproc_per_node N`` (one agent, N workers), or N ranks started one by one."""

    def __init__(self, args, output_dir: Path, resume: bool, log: Path):
        self.nproc, self.launcher = args.nproc, args.launcher
        self.log_path = log
        self.log = log.open("w")
        options = _options(args, output_dir, resume)
        env = _env(args)
        if self.nproc == 1:
            self.procs = [subprocess.Popen([sys.executable, *PRETRAIN_MODULE, *options], env=env, stdout=self.log,
                                           stderr=subprocess.STDOUT)]
        elif self.launcher == "torchrun":
            cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(self.nproc),
                   *PRETRAIN_MODULE, *options]
            self.procs = [subprocess.Popen(cmd, env=env, stdout=self.log, stderr=subprocess.STDOUT)]
        else:
            port = _free_port()
            self.procs = []
            for rank in range(self.nproc):
                rank_env = {**env, "RANK": str(rank), "LOCAL_RANK": str(rank), "WORLD_SIZE": str(self.nproc),
                            "LOCAL_WORLD_SIZE": str(self.nproc), "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port)}
                out = self.log if rank == 0 else log.with_suffix(f".rank{rank}.log").open("w")
                self.procs.append(subprocess.Popen([sys.executable, *PRETRAIN_MODULE, *options], env=rank_env,
                                                   stdout=out, stderr=subprocess.STDOUT))

    def ranks(self) -> list[int]:
        """The pids of the ranks, in rank order (torchrun's workers once started)."""
        if self.nproc > 1 and self.launcher == "torchrun":
            workers = _children(self.procs[0].pid)
            return sorted(workers, key=lambda pid: (_rank_of(pid) is None, _rank_of(pid) or 0))
        return [p.pid for p in self.procs]

    def running(self) -> bool:
        return any(p.poll() is None for p in self.procs)

    def wait_gone(self, timeout: float) -> bool:
        """Wait until every process (and torchrun's workers) exited; False after ``timeout`` seconds."""
        workers = self.ranks() if self.nproc > 1 and self.launcher == "torchrun" else []
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if not self.running() and not any(_alive(w) for w in workers):
                return True
            time.sleep(0.02)
        return False

    def kill_all(self) -> None:
        for pid in [*self.ranks(), *(p.pid for p in self.procs)]:
            try:
                os.kill(pid, signal.SIGKILL)
            except OSError:
                pass
        for p in self.procs:
            p.wait()

    def close(self) -> None:
        self.log.close()

    def output(self) -> str:
        if not self.log.closed:
            self.log.flush()
        return self.log_path.read_text(errors="replace")


def _last_logged_step(output_dir: Path, since: float = 0.0) -> int:
    """The last step in metrics.jsonl, or 0 when the file was not written after ``since`` (wall time)."""
    path = output_dir / "metrics.jsonl"
    try:
        if path.stat().st_mtime < since:
            return 0
        lines = [line for line in path.read_text().splitlines() if line.strip()]
        return json.loads(lines[-1])["step"] if lines else 0
    except (OSError, ValueError, KeyError):
        return 0


def _saving(output_dir: Path, since: float = 0.0) -> bool:
    """Whether a checkpoint is being written (a temp folder created after ``since``, wall time)."""
    root = output_dir / "checkpoints"
    try:
        return root.is_dir() and any(p.name.startswith(".tmp_step_") and p.stat().st_mtime >= since
                                     for p in root.iterdir())
    except OSError:  # the folder was renamed while we looked: the save just finished
        return False


def _newest_checkpoint(output_dir: Path) -> int | None:
    root = output_dir / "checkpoints"
    steps = []
    for p in root.glob("step_*") if root.is_dir() else []:
        try:
            if (p / "COMPLETE").is_file():
                steps.append(json.loads((p / "trainer_state.json").read_text())["step"])
        except (OSError, ValueError, KeyError):
            continue
    return max(steps) if steps else None


def _has_checkpoint(output_dir: Path) -> bool:
    return _newest_checkpoint(output_dir) is not None


def _check_resumed(output: str, expected: int | None, *, started: bool = True) -> str | None:
    """A problem when the run did not resume from the newest complete checkpoint ``expected`` (None: a fresh run).

    ``started=False``: a run killed early may not have got as far as saying where it resumed; only a wrong step counts.
    """
    found = RESUMING.search(output)
    got = int(found.group(1)) if found else None
    if got == expected or (got is None and not started):
        return None
    return f"resumed from step {got}, but the newest complete checkpoint was step {expected}"


def run_to_end(args, output_dir: Path, log, work: Path, name: str) -> str | None:
    """Run to the end (resuming if there is a checkpoint); returns a problem, or None."""
    expected = _newest_checkpoint(output_dir)
    run = Launch(args, output_dir, expected is not None, work / f"{name}.log")
    if not run.wait_gone(args.run_timeout):
        run.kill_all()
        return f"{name}: still running after {args.run_timeout} s"
    run.close()
    code = max(p.returncode for p in run.procs)
    if code:
        log(run.output()[-3000:])
        return f"{name}: exit code {code}"
    return _check_resumed(run.output(), expected)


def run_and_kill(args, output_dir: Path, work: Path, name: str, target_step: int, during_save: bool, delay: float,
                 rng: random.Random) -> tuple[str, float | None, list[str]]:
    """Start a run (resuming if there is a checkpoint), SIGKILL one rank once ``target_step`` is logged (then at a
    checkpoint write, or after ``delay``); wait until every process is gone.

    Returns:
        (what happened, the exit delay in seconds: the kill to the last process gone, problems).
    """
    expected = _newest_checkpoint(output_dir)
    since = time.time()
    run = Launch(args, output_dir, expected is not None, work / f"{name}.log")
    start, problems = time.monotonic(), []
    try:
        while run.running() and time.monotonic() - start < args.run_timeout:
            if _last_logged_step(output_dir, since) >= target_step:
                if during_save:
                    while run.running() and not _saving(output_dir, since):
                        time.sleep(0.001)
                else:
                    time.sleep(delay)
                break
            time.sleep(0.01)
        ranks = run.ranks()
        if not run.running() or len(ranks) != args.nproc:
            return f"finished before the kill (exit {[p.poll() for p in run.procs]})", None, problems
        saving = _saving(output_dir, since)
        victim = rng.randrange(args.nproc)
        os.kill(ranks[victim], signal.SIGKILL)
        killed_at = time.monotonic()
        gone = run.wait_gone(args.collective_timeout + 60.0)
        exit_delay = time.monotonic() - killed_at
        if not gone:
            problems.append(f"{name}: the other ranks still ran {exit_delay:.0f} s after the kill (a hang)")
            run.kill_all()
        if (problem := _check_resumed(run.output(), expected, started=False)) is not None:
            problems.append(f"{name}: {problem}")
        who = f"rank {victim} of {args.nproc}" if args.nproc > 1 else "the run"
        what = (f"killed {who} after step {_last_logged_step(output_dir)}"
                f"{' during a checkpoint save' if saving else ''}")
        return what, exit_delay, problems
    finally:
        if run.running():
            run.kill_all()
        run.close()


def compare(reference: Path, faulty: Path) -> list[str]:
    """Differences between two finished runs (final weights, statistics); empty when bit-identical."""
    from safetensors.numpy import load_file

    from hf_varinit.record.stats_file import load_stats

    problems = []
    a, b = load_file(reference / "final" / "model.safetensors"), load_file(faulty / "final" / "model.safetensors")
    if a.keys() != b.keys():
        problems.append(f"weights: different tensors {sorted(a.keys() ^ b.keys())}")
    for name in sorted(a.keys() & b.keys()):
        if not np.array_equal(a[name], b[name]):
            problems.append(f"weights: {name} differs (max abs {np.abs(a[name] - b[name]).max():.3e})")
    sa, sb = load_stats(reference), load_stats(faulty)
    if len(np.unique(sb.step)) != len(sb.step):
        problems.append(f"statistics: duplicate steps {sb.step.tolist()}")
    if not np.array_equal(sa.step, sb.step):
        problems.append(f"statistics: steps {sb.step.tolist()} != reference {sa.step.tolist()}")
    else:
        for stat in ("mean", "var", "second_moment"):
            if not np.array_equal(getattr(sa, stat), getattr(sb, stat)):
                problems.append(f"statistics: {stat} differs")
    return problems


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", default="gpt2-tiny-test")
    parser.add_argument("--max-steps", type=int, default=40)
    parser.add_argument("--checkpoint-every", type=int, default=4)
    parser.add_argument("--record-every", type=int, default=2)
    parser.add_argument("--dropout", type=float, default=0.1, help="on, so the restored RNG state matters")
    parser.add_argument("--kills", type=int, default=5)
    parser.add_argument("--seed", type=int, default=0, help="seed of the kill moments and of the rank killed")
    parser.add_argument("--nproc", type=int, default=1, choices=(1, 2), help="ranks per run; 2: one rank is killed")
    parser.add_argument("--shard", default="ddp", choices=("ddp", "fully_shard"),
                        help="with --nproc 2: DDP, or torch's fully_shard (sharded checkpoints)")
    parser.add_argument("--launcher", default="torchrun", choices=("torchrun", "manual"),
                        help="with --nproc 2: torchrun, or the ranks started one by one (nothing tears them down)")
    parser.add_argument("--collective-timeout", type=int, default=20,
                        help="the runs' --collective-timeout (seconds); a survivor must be gone within it + 60 s")
    parser.add_argument("--run-timeout", type=float, default=900.0, help="seconds a run may take")
    parser.add_argument("--workdir", default=None, help="default: a new temporary folder")
    parser.add_argument("--cache-dir", default=None, help="tokenizer cache shared by the runs")
    args = parser.parse_args(argv)
    rng = random.Random(args.seed)
    work = Path(args.workdir or tempfile.mkdtemp(prefix="kill_resume_"))
    work.mkdir(parents=True, exist_ok=True)
    args.cache_dir = args.cache_dir or str(work / "cache")
    reference, faulty = work / "reference", work / "faulty"

    def log(msg: str) -> None:
        print(msg, flush=True)

    layout = "1 process" if args.nproc == 1 else f"{args.nproc} ranks, {args.shard}, {args.launcher}"
    t0 = time.monotonic()
    if problem := run_to_end(args, reference, log, work, "reference"):
        raise SystemExit(f"the reference run failed: {problem}")
    log(f"reference run ({layout}): {args.max_steps} steps in {time.monotonic() - t0:.1f} s")
    # kill targets: increasing logged steps; the kill at index save_kill waits for a checkpoint write
    targets = sorted(rng.sample(range(1, args.max_steps), k=min(args.kills, args.max_steps - 1)))
    save_kill = rng.randrange(len(targets)) if targets else -1
    problems, delays, survived = [], [], 0
    for i, target in enumerate(targets):
        resume = _has_checkpoint(faulty)
        what, delay, found = run_and_kill(args, faulty, work, f"kill_{i + 1}", target, i == save_kill,
                                          rng.uniform(0, 0.3), rng)
        problems += found
        if delay is not None:
            delays.append(delay)
            survived += not found
        shown = f", all processes gone {delay:.1f} s after the kill" if delay is not None else ""
        log(f"kill {i + 1}/{len(targets)} (target step {target}, resume={resume}): {what}{shown}")
    if problem := run_to_end(args, faulty, log, work, "final"):
        problems.append(problem)
    else:
        problems += compare(reference, faulty)
    for p in problems:
        log(f"MISMATCH {p}")
    worst = f"; worst exit delay {max(delays):.1f} s" if delays else ""
    log(f"{'FAIL' if problems else 'OK: bit-identical weights and statistics'} ({layout}: {survived} kills "
        f"survived{worst}; {time.monotonic() - t0:.1f} s, work folder {work})")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.path.insert(0, str(ROOT))
    raise SystemExit(main())
