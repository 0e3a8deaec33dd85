"""Tokens/s and peak memory of the hf_varinit pretraining loop (recording every 10 steps) vs `transformers.Trainer`.

Same model (a 12-layer GPT-2 of the config, built with the same rule and seed), same packed data, batch,
optimizer (AdamW, clip 1.0), warmup + cosine schedule and number of steps, on CPU, same thread count. Each side
runs in its own subprocess (so its peak RSS, ``ru_maxrss``, is its own); sides, sizes and compile settings are
interleaved round by round, the side that goes first alternating. A run's throughput is its median step after
``--skip`` warmup steps (the compiling first step is one of them), from step-end timestamps: ours from the
per-step metrics lines (``--log-every 1``), the Trainer's from a callback. Reported per setting: the median over
the rounds, the spread (min..max), the ratio of the medians and the median of the per-round ratios (the two sides
of a round run back to back, so a slow spell on a shared machine hits both), the compile time (the first step) and
the peak RSS of each side.

    python scripts/bench_throughput.py                          # 5 rounds, n_embd 128 and 256, compile off and on
    python scripts/bench_throughput.py --rounds 5 --steps 8 --skip 3 --n-embd 128 256 --compile off on
    python scripts/bench_throughput.py --profile ours --n-embd 128  # cProfile of one run of the loop, top 25
"""

from __future__ import annotations

import argparse
import cProfile
import io
import json
import pstats
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from transformers import Trainer, TrainerCallback, TrainingArguments  # noqa: E402

from hf_varinit import from_config  # noqa: E402
from hf_varinit.cli.pretrain import parse_options  # noqa: E402
from hf_varinit.train.build import build_model_config, load_data  # noqa: E402
from hf_varinit.train.loop import run_pretrain  # noqa: E402

SIDES = ("ours", "trainer")


class StepTimes(TrainerCallback):
    def __init__(self):
        self.times: list[float] = [time.perf_counter()]

    def on_train_begin(self, args, state, control, **kwargs):
        self.times = [time.perf_counter()]

    def on_step_end(self, args, state, control, **kwargs):
        self.times.append(time.perf_counter())


class Blocks(torch.utils.data.Dataset):
    def __init__(self, ids: torch.Tensor):
        self.ids = ids

    def __len__(self):
        return len(self.ids)

    def __getitem__(self, i):
        return {"input_ids": self.ids[i], "labels": self.ids[i]}


def run_ours(argv: list[str], work: Path, compile: bool) -> tuple[list[float], float | None]:
    """Seconds of each step 1..steps-1 (the last step's line also holds the final eval and is left out), and the
    compile time (the first step, which the loop leaves out of its tokens/s)."""
    out = work / "ours"
    options = parse_options([*argv, "--output-dir", str(out), "--log-every", "1", "--record-every", "10",
                             "--eval-every", "none", "--eval-batches", "1", "--checkpoint-every", "none",
                             "--disable-tqdm", *(["--compile"] if compile else [])])
    result = run_pretrain(options)
    lines = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    tokens_per_step = options.training.batch_size * options.model.block_size
    return [tokens_per_step / x["tokens_per_s"] for x in lines[:-1]], result.compile_s


def run_trainer(argv: list[str], work: Path, compile: bool) -> tuple[list[float], float | None]:
    """Seconds of each step 1..steps-1, as for ours (the first one compiles)."""
    options = parse_options(argv)
    t, m = options.training, options.model
    data = load_data(options)
    model = from_config(build_model_config(m, data.tokenizer), rule=t.init, seed=t.seed)
    args = TrainingArguments(
        output_dir=str(work / "trainer"), max_steps=t.max_steps, per_device_train_batch_size=t.batch_size,
        learning_rate=t.lr, warmup_steps=t.warmup_steps, lr_scheduler_type="cosine", optim="adamw_torch",
        adam_beta2=0.95, weight_decay=t.weight_decay, max_grad_norm=t.grad_clip or 0.0, logging_steps=10,
        save_strategy="no", eval_strategy="no", report_to=[], use_cpu=True, disable_tqdm=True, seed=t.seed,
        dataloader_num_workers=0, torch_compile=compile,
    )
    timer = StepTimes()
    trainer = Trainer(model=model, args=args, train_dataset=Blocks(data.train[:]["input_ids"]), callbacks=[timer])
    trainer.train()
    times = np.diff(timer.times)[: t.max_steps - 1].tolist()
    return times, times[0] if compile else None


def child(args: argparse.Namespace) -> int:
    """One side, one setting: write its step times, compile time and peak RSS as JSON."""
    argv = ["--config", args.config, "--n-embd", str(args.n_embd), "--max-steps", str(args.steps),
            "--warmup-steps", "5", "--max-chars", str(args.max_chars),
            *(["--cache-dir", args.cache_dir] if args.cache_dir else [])]
    run = run_ours if args.side == "ours" else run_trainer
    with tempfile.TemporaryDirectory(prefix="bench_throughput_") as tmp:
        if args.profile:
            profiler = cProfile.Profile()
            times, compile_s = profiler.runcall(run, argv, Path(tmp), args.compile == "on")
            text = io.StringIO()
            pstats.Stats(profiler, stream=text).sort_stats("tottime").print_stats(25)
            print(text.getvalue())
        else:
            times, compile_s = run(argv, Path(tmp), args.compile == "on")
    measured = statistics.median(times[args.skip:])
    options = parse_options(argv)
    result = {"side": args.side, "n_embd": args.n_embd, "compile": args.compile, "step_s": measured,
              "first_step_s": compile_s if compile_s is not None else times[0],
              "tokens_per_s": options.training.batch_size * options.model.block_size / measured,
              "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,  # Linux: KiB
              "steps_measured": len(times[args.skip:])}
    if args.json:
        Path(args.json).write_text(json.dumps(result))
    print(json.dumps(result))
    return 0


def spawn(args: argparse.Namespace, side: str, n_embd: int, compile: str, json_path: Path) -> dict:
    cmd = [sys.executable, __file__, "--side", side, "--n-embd", str(n_embd), "--compile", compile, "--config",
           args.config, "--steps", str(args.steps), "--skip", str(args.skip), "--json", str(json_path),
           "--max-chars", str(args.max_chars), *(["--cache-dir", args.cache_dir] if args.cache_dir else [])]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        raise SystemExit(f"{side} n_embd={n_embd} compile={compile} failed:\n{proc.stderr[-3000:]}")
    return json.loads(json_path.read_text())


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", default="gpt2-12l-tiny", help="YAML path or bundled config name (12 layers)")
    parser.add_argument("--n-embd", type=int, nargs="+", default=[128, 256], help="model widths")
    parser.add_argument("--compile", nargs="+", choices=("off", "on"), default=["off", "on"],
                        help="torch.compile settings (both sides: --compile / Trainer's torch_compile=True)")
    parser.add_argument("--steps", type=int, default=8)
    parser.add_argument("--skip", type=int, default=3, help="warmup steps left out (the compiling step among them)")
    parser.add_argument("--rounds", type=int, default=5, help="interleaved rounds")
    parser.add_argument("--max-chars", type=int, default=300_000, help="text to train the tokenizer on and pack")
    parser.add_argument("--budget-s", type=float, default=None,
                        help="start no new round after this many seconds (the rounds done are reported)")
    parser.add_argument("--cache-dir", default=None)
    parser.add_argument("--side", choices=SIDES, help=argparse.SUPPRESS)  # a child process: one side, one setting
    parser.add_argument("--json", help=argparse.SUPPRESS)
    parser.add_argument("--profile", choices=SIDES, help="cProfile one run of this side (first --n-embd, --compile)")
    args = parser.parse_args(argv)
    if args.profile:
        args.side, args.n_embd, args.compile = args.profile, args.n_embd[0], args.compile[0]
    if args.side:
        if isinstance(args.n_embd, list):
            args.n_embd = args.n_embd[0]
        if isinstance(args.compile, list):
            args.compile = args.compile[0]
        return child(args)
    results: list[dict] = []
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="bench_throughput_") as tmp:
        for r in range(args.rounds):
            if args.budget_s and r and time.perf_counter() - started > args.budget_s:
                print(f"budget of {args.budget_s:.0f} s spent: {r} rounds done", flush=True)
                break
            for n_embd in args.n_embd:
                for compile in args.compile:
                    for side in SIDES if r % 2 == 0 else SIDES[::-1]:
                        result = spawn(args, side, n_embd, compile, Path(tmp) / f"{side}.json")
                        results.append({**result, "round": r})
                        print(f"round {r} n_embd {n_embd} compile {compile} {side:8s} "
                              f"{result['tokens_per_s']:8.0f} tokens/s  first step {result['first_step_s']:6.1f} s  "
                              f"peak RSS {result['peak_rss_mib']:6.0f} MiB", flush=True)
    rounds = 1 + max(x["round"] for x in results)
    print(f"\n{rounds} rounds, {args.steps} steps each, median step of steps {args.skip + 1}..{args.steps - 1}, "
          f"{torch.get_num_threads()} threads, {time.perf_counter() - started:.0f} s in all")
    print(f"{'n_embd':>6} {'compile':>7} {'side':>8} {'median tok/s':>12} {'min..max':>15} {'first step s':>13} "
          f"{'peak RSS MiB':>12}")
    for n_embd in args.n_embd:
        for compile in args.compile:
            medians = {}
            for side in SIDES:
                rows = [x for x in results if (x["side"], x["n_embd"], x["compile"]) == (side, n_embd, compile)]
                rates = [x["tokens_per_s"] for x in rows]
                medians[side] = statistics.median(rates)
                first = statistics.median(x["first_step_s"] for x in rows)
                spread = f"{min(rates):.0f}..{max(rates):.0f}"
                print(f"{n_embd:>6} {compile:>7} {side:>8} {medians[side]:>12.0f} {spread:>15} {first:>13.1f} "
                      f"{max(x['peak_rss_mib'] for x in rows):>12.0f}")
            rate = {(x["round"], x["side"]): x["tokens_per_s"] for x in results
                    if (x["n_embd"], x["compile"]) == (n_embd, compile)}
            paired = [rate[r, "ours"] / rate[r, "trainer"] for r in {x["round"] for x in results}]
            print(f"{'':>6} {'':>7} {'ratio':>8} {medians['ours'] / medians['trainer']:>12.3f}x Trainer (medians); "
                  f"per round {statistics.median(paired):.3f}x median, {min(paired):.2f}..{max(paired):.2f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
