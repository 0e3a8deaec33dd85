"""`hf-varinit demo`: the main job, end to end and offline.

Pretrains the studies' 12-layer GPT-2 (n_embd 128) on the Python standard library's sources with
per-layer Q/K/V variance recording (``configs/gpt2-12l-tiny.yaml``), then turns the statistics into a
variance report that ``optimal:report=<folder>`` can initialise the next model from.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from .report import VarianceReport

DEMO_CONFIG = Path(__file__).resolve().parents[1] / "configs" / "gpt2-12l-tiny.yaml"


def add_demo_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--output-dir", default="runs/demo", help="where the run and its report go")
    parser.add_argument("--init", default="gpt2", help="init rule spec of the model")
    parser.add_argument("--max-steps", type=int, default=None, help="override the config's 300 steps")


def run_demo(args: argparse.Namespace):
    from .train import run_pretrain
    from .train_config import parse_options

    argv = ["--output-dir", args.output_dir, "--init", args.init]
    if DEMO_CONFIG.is_file():
        argv = ["--config", str(DEMO_CONFIG), *argv]
    if args.max_steps is not None:
        argv += ["--max-steps", str(args.max_steps)]
    result = run_pretrain(parse_options(argv))
    report_dir = VarianceReport.from_stats(result.stats_path).save(Path(args.output_dir) / "report")
    print(f"variance report  {report_dir}/ (README.md model card, steady_state.json, plots)")
    print(f'next model       hf-varinit plan --model gpt2 --n-layer 12 --n-embd 128 '
          f'--rule "optimal:report={report_dir}"')
    return result
