"""Overhead of `VarianceRecorder` on a training step: recording every step vs no recording.

One process, one model, one optimizer (fused AdamW, clip 1.0, as the loop). Three modes run interleaved in
cycles of ``--steps-per-block`` steps each, the order rotating every cycle, so drift in machine speed hits all
alike:

* ``off``: no recording;
* ``now``: ``recorder.record(step)`` every step (`moments.DenseMoments`: one pass per parameter, whatever its
  Q/K/V slices, one host transfer);
* ``before``: the per-tensor kernel the recorder used until this change (`moments.var_mean` on dense weights:
  two reductions per tensor or slice, each strided slice copied first), then ``.cpu()``.

Reported per mode: the median step time; its overhead over ``off`` (ratio of medians, and the median of the
per-cycle ratios of block medians with a 95 % t-interval); the kernel call alone (median of 30 calls).
``--clock cpu`` times with the process's CPU time instead of wall time: on a CPU shared with other jobs (with
``--threads 1``), the work of a step, not the time others took.

    python scripts/bench_recorder.py                   # GPT-2 12 layers, n_embd 256, batch 8 x 128
    python scripts/bench_recorder.py --cycles 12 --steps-per-block 5
"""

from __future__ import annotations

import argparse
import math
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from transformers import GPT2Config  # noqa: E402

from hf_varinit import VarianceRecorder, from_config  # noqa: E402
from hf_varinit.record.moments import var_mean  # noqa: E402
from hf_varinit.train.study_stats import t_interval  # noqa: E402

MODES = ("off", "now", "before")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n-layer", type=int, default=12)
    parser.add_argument("--n-embd", type=int, default=256)
    parser.add_argument("--n-head", type=int, default=4)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--block-size", type=int, default=128)
    parser.add_argument("--vocab-size", type=int, default=4096)
    parser.add_argument("--cycles", type=int, default=10, help="cycles of one block per mode (order rotating)")
    parser.add_argument("--steps-per-block", type=int, default=5)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's own)")
    parser.add_argument("--clock", choices=("wall", "cpu"), default="wall", help="wall time or process CPU time")
    args = parser.parse_args(argv)
    clock = time.process_time if args.clock == "cpu" else time.perf_counter
    if args.threads:
        torch.set_num_threads(args.threads)

    torch.manual_seed(0)
    config = GPT2Config(n_layer=args.n_layer, n_embd=args.n_embd, n_head=args.n_head, vocab_size=args.vocab_size,
                        n_positions=args.block_size, bos_token_id=0, eos_token_id=0)
    model = from_config(config, "gpt2", seed=0)
    model.train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4, fused=True)
    recorder = VarianceRecorder(model, every=1, rule="gpt2")
    data = torch.randint(0, args.vocab_size, (64, args.block_size), generator=torch.Generator().manual_seed(0))
    step = 0

    def train_step(mode: str) -> float:
        nonlocal step
        ids = data[torch.randint(0, len(data), (args.batch_size,))]
        t0 = clock()
        loss = model(input_ids=ids, labels=ids, use_cache=False).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        step += 1
        if mode == "now":
            recorder.record(step)
        elif mode == "before":
            var_mean(recorder.entries).cpu()
        return clock() - t0

    for _ in range(args.warmup):
        train_step("now")
    times: dict[str, list[float]] = {m: [] for m in MODES}
    blocks: dict[str, list[float]] = {m: [] for m in MODES}  # the median of each block
    for c in range(args.cycles):
        for mode in MODES[c % 3:] + MODES[:c % 3]:
            block = [train_step(mode) for _ in range(args.steps_per_block)]
            times[mode] += block
            blocks[mode].append(statistics.median(block))
    calls = {"now": lambda: recorder.compute(), "before": lambda: var_mean(recorder.entries).cpu()}
    alone = {}
    for mode, call in calls.items():  # the kernel alone, for the breakdown
        durations = []
        for _ in range(30):
            t0 = clock()
            call()
            durations.append(clock() - t0)
        alone[mode] = statistics.median(durations)
    off = statistics.median(times["off"])
    n_params = sum(p.numel() for p in model.parameters())
    print(f"GPT-2 {args.n_layer} layers, n_embd {args.n_embd}, {n_params / 1e6:.1f}M params, batch "
          f"{args.batch_size} x {args.block_size}, {torch.get_num_threads()} threads, {len(recorder.keys)} tracked, "
          f"{args.cycles} cycles x {args.steps_per_block} steps per mode")
    print(f"{'mode':>7} {'median step ms':>14} {'overhead':>9} {'per-cycle median (95 % CI)':>30} "
          f"{'kernel alone ms':>15} {'kernel / step':>13}")
    for mode in MODES:
        median = statistics.median(times[mode])
        paired = [100 * (b / o - 1) for b, o in zip(blocks[mode], blocks["off"])]
        lo, hi = t_interval(paired)
        ci = "" if mode == "off" else f"{statistics.median(paired):+.2f} % ({lo:+.2f} .. {hi:+.2f})"
        kernel = alone.get(mode)
        print(f"{mode:>7} {median * 1e3:>14.1f} {100 * (median / off - 1):>+8.2f}% {ci:>30} "
              f"{'' if kernel is None else f'{kernel * 1e3:.2f}':>15} "
              f"{'' if kernel is None else f'{100 * kernel / off:.2f} %':>13}")
    spread = np.percentile(times["off"], [25, 75])
    print(f"step time spread (off, interquartile): {spread[0] * 1e3:.1f}..{spread[1] * 1e3:.1f} ms "
          f"({100 * (spread[1] - spread[0]) / off:.1f} % of the median); one read of the tracked weights: "
          f"{_one_read_ms(recorder, clock):.2f} ms")
    return 0


def _one_read_ms(recorder: VarianceRecorder, clock) -> float:
    """The floor: one sum over every tracked parameter (median of 30), in ms."""
    params = list({id(p): p.detach() for _, p in recorder.entries}.values())
    durations = []
    for _ in range(30):
        t0 = clock()
        for p in params:
            p.sum()
        durations.append(clock() - t0)
    return statistics.median(durations) * 1e3 if durations else math.nan


if __name__ == "__main__":
    raise SystemExit(main())
