"""Fault injection: SIGKILL a pretraining run at random moments, resume each time, compare with an uninterrupted run.

One reference run trains to ``--max-steps`` without interruption. The faulty run is started, killed with
SIGKILL ``--kills`` times (seeded moments: after a random number of logged steps, and at least once while a
checkpoint is being written, i.e. while ``checkpoints/.tmp_step_N`` exists), and resumed with ``--resume``
after each kill. At the end the final weights and the variance records must be bit-identical to the
reference, with no duplicate or missing recorded step.

    python scripts/kill_resume.py --kills 5 --max-steps 40 --seed 1
"""

from __future__ import annotations

import argparse
import json
import os
import random
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
PRETRAIN_MODULE = ["-m", "hf_varinit", "pretrain"]


def _command(args, output_dir: Path, resume: bool) -> list[str]:
    cmd = [sys.executable, *PRETRAIN_MODULE, "--config", args.config, "--output-dir", str(output_dir),
           "--max-steps", str(args.max_steps), "--checkpoint-every", str(args.checkpoint_every),
           "--record-every", str(args.record_every), "--log-every", "1", "--keep-last", "2",
           "--dropout", str(args.dropout)]
    if args.cache_dir:
        cmd += ["--cache-dir", args.cache_dir]
    return cmd + (["--resume"] if resume else [])


def _env() -> dict[str, str]:
    return {**os.environ, "HF_HUB_OFFLINE": "1", "TQDM_DISABLE": "1", "PYTHONPATH": str(ROOT)}


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


def _has_checkpoint(output_dir: Path) -> bool:
    root = output_dir / "checkpoints"
    return root.is_dir() and any((p / "COMPLETE").is_file() for p in root.glob("step_*"))


def run_to_end(cmd: list[str], log) -> None:
    proc = subprocess.run(cmd, env=_env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    if proc.returncode:
        log(proc.stdout[-3000:])
        raise SystemExit(f"pretraining failed with exit code {proc.returncode}: {' '.join(cmd)}")


def run_and_kill(cmd: list[str], output_dir: Path, target_step: int, during_save: bool, delay: float,
                 timeout: float = 600.0) -> str:
    """Start ``cmd``, SIGKILL it once ``target_step`` is logged (then at a checkpoint write, or after ``delay``)."""
    since = time.time()
    proc = subprocess.Popen(cmd, env=_env(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    start = time.monotonic()
    try:
        while proc.poll() is None and time.monotonic() - start < timeout:
            if _last_logged_step(output_dir, since) >= target_step:
                if during_save:
                    while proc.poll() is None and not _saving(output_dir, since):
                        time.sleep(0.001)
                else:
                    time.sleep(delay)
                break
            time.sleep(0.01)
        if proc.poll() is not None:
            return f"finished before the kill (exit {proc.returncode})"
        saving = _saving(output_dir, since)
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        return f"killed after step {_last_logged_step(output_dir)}{' during a checkpoint save' if saving else ''}"
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


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
    parser.add_argument("--seed", type=int, default=0, help="seed of the kill moments")
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

    t0 = time.monotonic()
    run_to_end(_command(args, reference, resume=False), log)
    log(f"reference run: {args.max_steps} steps in {time.monotonic() - t0:.1f} s")
    # kill targets: increasing logged steps; the kill at index save_kill waits for a checkpoint write
    targets = sorted(rng.sample(range(1, args.max_steps), k=min(args.kills, args.max_steps - 1)))
    save_kill = rng.randrange(len(targets)) if targets else -1
    for i, target in enumerate(targets):
        resume = _has_checkpoint(faulty)
        what = run_and_kill(_command(args, faulty, resume), faulty, target, i == save_kill, rng.uniform(0, 0.3))
        log(f"kill {i + 1}/{len(targets)} (target step {target}, resume={resume}): {what}")
    run_to_end(_command(args, faulty, _has_checkpoint(faulty)), log)
    problems = compare(reference, faulty)
    for p in problems:
        log(f"MISMATCH {p}")
    log(f"{'FAIL' if problems else 'OK: bit-identical weights and statistics'} ({time.monotonic() - t0:.1f} s, "
        f"work folder {work})")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.path.insert(0, str(ROOT))
    raise SystemExit(main())
