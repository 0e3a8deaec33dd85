"""Tokens/s of the hf_varinit pretraining loop vs the bare PyTorch loop (the limit) and `transformers.Trainer`.

The three sides (`sides.py`): **ours**, `run_pretrain` as a user runs it (recording every 10 steps, a metrics line
every 10); **bare**, forward, backward, clip, fused AdamW step, zero_grad and nothing else; **trainer**,
`transformers.Trainer` with the same fused AdamW. Same model (the config's 12-layer GPT-2 at each width, built with
the same rule and seed), packed blocks, batch, clip 1.0 and thread count, on CPU. Each side runs in its own
subprocess (so its peak RSS, ``ru_maxrss``, is its own); sides, sizes and compile settings are interleaved round by
round, the order of the sides rotating. A run's tokens/s is over steps ``skip + 1 .. steps`` (default 5..14: ten
steps, one of them a record and metrics step); its first step is the compile time.

``--clock cpu`` measures tokens per second of the process's CPU time instead of wall time: on a CPU shared with
other jobs (run it with ``OMP_NUM_THREADS=1``), the work each side does, not the time the others took.

Per setting: the median tokens/s of each side over the rounds (min..max), the ratio of this loop to the bare loop
and to Trainer as the geometric mean of the per-round paired ratios (the sides of a round run back to back, so a
slow spell on a shared machine hits them alike) with its 95 % t-interval (on the log ratios, ``n - 1`` degrees of
freedom), the compile time and the peak RSS of each side. The last lines give the worst setting:
``ratio to bare loop: X (worst setting)``.

    python scripts/bench_throughput.py                          # 5 rounds, n_embd 128 and 256, compile off and on
    python scripts/bench_throughput.py --rounds 5 --n-embd 128 256 --compile off --json benchmarks/throughput.json
    python scripts/bench_throughput.py --profile ours --n-embd 128  # cProfile of one run of the loop, top 25
    python scripts/bench_throughput.py --merge a.json b.json --clock cpu  # the table of several runs' rounds
"""

from __future__ import annotations

import argparse
import cProfile
import io
import json
import math
import os
import pstats
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "scripts"))

from sides import SIDES, Setting  # noqa: E402

from hf_varinit.train.study_stats import t_interval  # noqa: E402

ORDER = ("ours", "bare", "trainer")


def child(args: argparse.Namespace) -> int:
    """One side, one setting: write its timing and peak RSS as JSON."""
    setting = Setting(config=args.config, n_embd=args.n_embd, steps=args.steps, skip=args.skip,
                      compile=args.compile == "on", backend=args.backend, max_chars=args.max_chars,
                      cache_dir=args.cache_dir)
    run = SIDES[args.side]
    with tempfile.TemporaryDirectory(prefix="bench_throughput_") as tmp:
        if args.profile:
            profiler = cProfile.Profile()
            timing = profiler.runcall(run, setting, Path(tmp))
            text = io.StringIO()
            pstats.Stats(profiler, stream=text).sort_stats("tottime").print_stats(25)
            print(text.getvalue())
        else:
            timing = run(setting, Path(tmp))
    result = {"side": args.side, "n_embd": args.n_embd, "compile": args.compile, **timing.to_dict(),
              "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}  # Linux: KiB
    if args.json_child:
        Path(args.json_child).write_text(json.dumps(result))
    print(json.dumps(result))
    return 0


def spawn(args: argparse.Namespace, side: str, n_embd: int, compile: str, json_path: Path) -> dict:
    cmd = [sys.executable, __file__, "--side", side, "--n-embd", str(n_embd), "--compile", compile, "--config",
           args.config, "--steps", str(args.steps), "--skip", str(args.skip), "--json-child", str(json_path),
           "--max-chars", str(args.max_chars), "--backend", args.backend,
           *(["--cache-dir", args.cache_dir] if args.cache_dir else [])]
    env = {**os.environ, "TQDM_DISABLE": "1", **dict(kv.split("=", 1) for kv in args.env)}
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
    if proc.returncode != 0:
        raise SystemExit(f"{side} n_embd={n_embd} compile={compile} failed:\n{proc.stderr[-3000:]}")
    return json.loads(json_path.read_text())


def rate(x: dict, clock: str) -> float:
    """A run's tokens per second of wall time or of CPU time."""
    return x["tokens_per_cpu_s"] if clock == "cpu" else x["tokens_per_s"]


def paired_ratio(results: list[dict], setting: tuple[int, str], other: str, clock: str
                 ) -> tuple[float, float, float, int]:
    """Geometric mean of the per-round ours / ``other`` tokens/s in ``setting``, its 95 % t-interval, rounds."""
    rates = {(x["round"], x["side"]): rate(x, clock) for x in results if (x["n_embd"], x["compile"]) == setting}
    logs = [math.log(rates[r, "ours"] / rates[r, other]) for r in sorted({r for r, _ in rates})
            if (r, "ours") in rates and (r, other) in rates]
    lo, hi = t_interval(logs)
    mean = statistics.fmean(logs)
    return math.exp(mean), math.exp(lo) if lo is not None else math.nan, math.exp(hi) if hi is not None else math.nan, \
        len(logs)


def report(results: list[dict], n_embds: list[int], compiles: list[str], clock: str) -> dict:
    """Print the table and the worst settings; return the summary."""
    print(f"{'n_embd':>6} {'compile':>7} {'side':>8} {'median tok/s':>12} {'min..max':>15} {'first step s':>12} "
          f"{'peak RSS MiB':>12} {'faults/step':>13}")
    summary = {"settings": [], "worst": {}}
    for n_embd in n_embds:
        for compile in compiles:
            if not any((x["n_embd"], x["compile"]) == (n_embd, compile) for x in results):
                continue  # a merge of runs of other settings
            row = {"n_embd": n_embd, "compile": compile}
            for side in ORDER:
                rows = [x for x in results if (x["side"], x["n_embd"], x["compile"]) == (side, n_embd, compile)]
                rates = [rate(x, clock) for x in rows]
                first = statistics.median(x["first_step_s"] for x in rows)
                faults = statistics.median(x.get("window_minor_faults", math.nan) / x["timed_steps"] for x in rows)
                rss = max(x["peak_rss_mib"] for x in rows)
                row[side] = {"median_tokens_per_s": statistics.median(rates), "min": min(rates), "max": max(rates),
                             "first_step_s": first, "peak_rss_mib": rss, "page_faults_per_step": faults}
                print(f"{n_embd:>6} {compile:>7} {side:>8} {statistics.median(rates):>12.0f} "
                      f"{f'{min(rates):.0f}..{max(rates):.0f}':>15} {first:>12.1f} {rss:>12.0f} {faults:>13.0f}")
            for other in ("bare", "trainer"):
                ratio, lo, hi, n = paired_ratio(results, (n_embd, compile), other, clock)
                row[f"ratio_to_{other}"] = {"paired": ratio, "ci95": [lo, hi], "rounds": n,
                                            "of_medians": row["ours"]["median_tokens_per_s"]
                                            / row[other]["median_tokens_per_s"]}
                print(f"{'':>6} {'':>7} {'ours/' + other:>15} {ratio:.3f}x per round (95 % CI {lo:.3f}..{hi:.3f}, "
                      f"{n} rounds); ratio of medians {row[f'ratio_to_{other}']['of_medians']:.3f}x")
            summary["settings"].append(row)
    for other, label in (("bare", "bare loop"), ("trainer", "Trainer")):
        worst = min(summary["settings"], key=lambda r: r[f"ratio_to_{other}"]["paired"])
        w = worst[f"ratio_to_{other}"]
        summary["worst"][other] = {"n_embd": worst["n_embd"], "compile": worst["compile"], **w}
        print(f"ratio to {label}: {w['paired']:.3f} (worst setting: n_embd {worst['n_embd']}, compile "
              f"{worst['compile']}; 95 % CI {w['ci95'][0]:.3f}..{w['ci95'][1]:.3f})")
    return summary


def merge(paths: list[str], clock: str) -> int:
    """The table of the rounds of several runs (round r of run i becomes round 1000 i + r)."""
    results = []
    for i, path in enumerate(paths):
        run = json.loads(Path(path).read_text())
        results += [{**x, "round": 1000 * i + x["round"]} for x in run["runs"]]
        loads = [f"{x[0]:.2f}" for x in run["load_average"]]
        print(f"{path}: {1 + max(x['round'] for x in run['runs'])} rounds, {run['threads']} threads, load average "
              f"{loads[0]} before, {loads[1]} after")
    settings = sorted({(x["n_embd"], x["compile"]) for x in results})
    report(results, sorted({n for n, _ in settings}), sorted({c for _, c in settings}), clock)
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", default="gpt2-12l-tiny", help="YAML path or bundled config name (12 layers)")
    parser.add_argument("--n-embd", type=int, nargs="+", default=[128, 256], help="model widths")
    parser.add_argument("--compile", nargs="+", choices=("off", "on"), default=["off", "on"],
                        help="torch.compile on every side (--compile / Trainer's torch_compile / torch.compile)")
    parser.add_argument("--backend", default="inductor", help="torch.compile backend of every side")
    parser.add_argument("--steps", type=int, default=14)
    parser.add_argument("--skip", type=int, default=4, help="warmup steps left out (the compiling step among them)")
    parser.add_argument("--rounds", type=int, default=5, help="interleaved rounds")
    parser.add_argument("--max-chars", type=int, default=300_000, help="text to train the tokenizer on and pack")
    parser.add_argument("--budget-s", type=float, default=None,
                        help="start no new round after this many seconds (the rounds done are reported)")
    parser.add_argument("--cache-dir", default=None)
    parser.add_argument("--json", default=None, help="also write every run and the summary to this file")
    parser.add_argument("--env", nargs="*", default=[], metavar="KEY=VALUE",
                        help="environment of every side's process, e.g. MALLOC_MMAP_THRESHOLD_=33554432 "
                             "MALLOC_TRIM_THRESHOLD_=4294967296 (glibc keeps freed activations instead of returning "
                             "them to the OS and faulting them back in every step)")
    parser.add_argument("--clock", choices=("wall", "cpu"), default="wall",
                        help="tokens per second of wall time, or of the process's CPU time (a shared CPU)")
    parser.add_argument("--merge", nargs="+", default=None, metavar="JSON",
                        help="print the table of the rounds of these --json files (each run's rounds kept apart)")
    parser.add_argument("--side", choices=tuple(SIDES), help=argparse.SUPPRESS)  # a child: one side, one setting
    parser.add_argument("--json-child", help=argparse.SUPPRESS)
    parser.add_argument("--profile", choices=tuple(SIDES), help="cProfile one run of this side (first --n-embd, "
                                                                "--compile)")
    args = parser.parse_args(argv)
    if args.profile:
        args.side, args.n_embd, args.compile = args.profile, args.n_embd[0], args.compile[0]
    if args.side:
        args.n_embd = args.n_embd[0] if isinstance(args.n_embd, list) else args.n_embd
        args.compile = args.compile[0] if isinstance(args.compile, list) else args.compile
        return child(args)
    if args.merge:
        return merge(args.merge, args.clock)
    results: list[dict] = []
    started = time.perf_counter()
    load_before = os.getloadavg()
    with tempfile.TemporaryDirectory(prefix="bench_throughput_") as tmp:
        for r in range(args.rounds):
            if args.budget_s and r and time.perf_counter() - started > args.budget_s:
                print(f"budget of {args.budget_s:.0f} s spent: {r} rounds done", flush=True)
                break
            for n_embd in args.n_embd:
                for compile in args.compile:
                    for side in ORDER[r % 3:] + ORDER[:r % 3]:
                        result = spawn(args, side, n_embd, compile, Path(tmp) / f"{side}.json")
                        results.append({**result, "round": r})
                        print(f"round {r} n_embd {n_embd} compile {compile} {side:8s} "
                              f"{result['tokens_per_s']:8.0f} tokens/s ({result['tokens_per_cpu_s']:8.0f} per CPU s)  "
                              f"first step {result['first_step_s']:6.1f} s  "
                              f"page faults {result['window_minor_faults'] / (args.steps - args.skip):8.0f}/step  "
                              f"peak RSS {result['peak_rss_mib']:6.0f} MiB", flush=True)
    rounds = 1 + max(x["round"] for x in results)
    load_after = os.getloadavg()
    print(f"\n{rounds} rounds, {args.steps} steps each, tokens per {args.clock} second over steps "
          f"{args.skip + 1}..{args.steps}, "
          f"{torch.get_num_threads()} threads, {time.perf_counter() - started:.0f} s in all; load average "
          f"{load_before[0]:.2f} before, {load_after[0]:.2f} after")
    summary = report(results, args.n_embd, args.compile, args.clock)
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps({"argv": sys.argv[1:], "clock": args.clock,
                                               "threads": torch.get_num_threads(), "env": args.env,
                                               "load_average": [load_before, load_after], "runs": results,
                                               **summary}, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
