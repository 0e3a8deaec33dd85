"""Overhead of `VarianceRecorder` on a training step: recording every step vs no recording.

Both modes run in one process on one model, interleaved in alternating blocks of steps (so drift in
machine speed hits both alike); the report gives the median step time of each mode and the overhead.

    python scripts/bench_recorder.py                   # GPT-2 12 layers, n_embd 256, batch 8 x 128
    python scripts/bench_recorder.py --blocks 10 --steps-per-block 6
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from transformers import GPT2Config  # noqa: E402

from hf_varinit import VarianceRecorder, from_config  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n-layer", type=int, default=12)
    parser.add_argument("--n-embd", type=int, default=256)
    parser.add_argument("--n-head", type=int, default=4)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--block-size", type=int, default=128)
    parser.add_argument("--vocab-size", type=int, default=4096)
    parser.add_argument("--blocks", type=int, default=8, help="blocks per mode (alternating)")
    parser.add_argument("--steps-per-block", type=int, default=5)
    parser.add_argument("--warmup", type=int, default=3)
    args = parser.parse_args(argv)

    torch.manual_seed(0)
    config = GPT2Config(n_layer=args.n_layer, n_embd=args.n_embd, n_head=args.n_head, vocab_size=args.vocab_size,
                        n_positions=args.block_size)
    model = from_config(config, "gpt2", seed=0)
    model.train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
    recorder = VarianceRecorder(model, every=1, rule="gpt2")
    data = torch.randint(0, args.vocab_size, (64, args.block_size), generator=torch.Generator().manual_seed(0))
    step = 0

    def train_step(record: bool) -> float:
        nonlocal step
        ids = data[torch.randint(0, len(data), (args.batch_size,))]
        t0 = time.perf_counter()
        loss = model(input_ids=ids, labels=ids).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        step += 1
        if record:
            recorder.maybe_record(step)
        return time.perf_counter() - t0

    for _ in range(args.warmup):
        train_step(True)
    times: dict[bool, list[float]] = {True: [], False: []}
    for b in range(2 * args.blocks):
        record = b % 2 == 0
        times[record] += [train_step(record) for _ in range(args.steps_per_block)]
    t_rec = torch.tensor(times[True])
    record_only = []
    for _ in range(20):  # the recorder call alone, for the breakdown
        t0 = time.perf_counter()
        recorder.compute().cpu()
        record_only.append(time.perf_counter() - t0)
    on, off = statistics.median(times[True]), statistics.median(times[False])
    n_params = sum(p.numel() for p in model.parameters())
    print(f"GPT-2 {args.n_layer} layers, n_embd {args.n_embd}, {n_params / 1e6:.1f}M params, batch "
          f"{args.batch_size} x {args.block_size}, {torch.get_num_threads()} threads, {len(recorder.keys)} tracked")
    print(f"median step, recording every step: {on * 1e3:8.1f} ms  (n={len(times[True])}, "
          f"min {t_rec.min().item() * 1e3:.1f} ms)")
    print(f"median step, no recording:         {off * 1e3:8.1f} ms  (n={len(times[False])}, "
          f"min {min(times[False]) * 1e3:.1f} ms)")
    print(f"recorder call alone (median):      {statistics.median(record_only) * 1e3:8.2f} ms")
    print(f"overhead of recording every step:  {100 * (on - off) / off:+.2f} %  "
          f"(recorder call / step: {100 * statistics.median(record_only) / off:.2f} %)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
