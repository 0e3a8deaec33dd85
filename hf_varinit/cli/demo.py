"""`hf-varinit demo`: the main job, end to end and offline.

With ``--config`` it runs any pretraining YAML the same way (the GPT-2 Q/K/V dynamics study is
``--config configs/gpt2-12l-qkv-study.yaml``).

Pretrains the studies' 12-layer GPT-2 (n_embd 128) on the Python standard library's sources with
per-layer Q/K/V variance recording (``configs/gpt2-12l-tiny.yaml``), then turns the statistics into a
variance report that ``optimal:report=<folder>`` can initialise the next model from.
"""

from __future__ import annotations

import argparse
import shlex
import shutil
from pathlib import Path

# the library (torch, transformers) is imported inside `run`, so `hf-varinit demo --help` is fast

DEMO_CONFIG = "gpt2-12l-tiny"  # a bundled config (configs/gpt2-12l-tiny.yaml)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Add the ``hf-varinit demo`` options to ``parser``."""
    parser.add_argument("--config", default=DEMO_CONFIG,
                        help="pretraining YAML or bundled config name (default: gpt2-12l-tiny)")
    parser.add_argument("--output-dir", default="runs/demo", help="where the run goes")
    parser.add_argument("--report-dir", default=None, help="where the report goes (default: <output-dir>/report)")
    parser.add_argument("--overwrite", action="store_true",
                        help="replace an existing --report-dir outside --output-dir (default: refuse up front)")
    parser.add_argument("--init", default=None, help="init rule spec (default: the config's)")
    parser.add_argument("--max-steps", type=int, default=None, help="override the config's number of steps")


def run(args: argparse.Namespace) -> int:
    """Pretrain with recording, then write the variance report; print where it went and the next command.

    Stopped by Ctrl-C or SIGTERM, it writes no report, prints the ``hf-varinit pretrain ... --resume`` command
    that continues the run, and returns 130 or 143.
    """
    from hf_varinit.cli.pretrain import parse_options
    from hf_varinit.io_utils import check_overwrite
    from hf_varinit.report.report import VarianceReport
    from hf_varinit.train.loop import run_pretrain

    output = Path(args.output_dir)
    if args.report_dir is not None and not Path(args.report_dir).resolve().is_relative_to(output.resolve()):
        check_overwrite(args.report_dir, args.overwrite)  # before training, not after
    if (output / "variance.safetensors").exists() or (output / "checkpoints").exists():
        print(f"replacing the previous run in {output}/")  # the demo starts fresh; pretrain --resume continues
        shutil.rmtree(output)
    argv = ["--config", args.config, "--output-dir", args.output_dir]
    if args.init is not None:
        argv += ["--init", args.init]
    if args.max_steps is not None:
        argv += ["--max-steps", str(args.max_steps)]
    result = run_pretrain(parse_options(argv), command=shlex.join(["hf-varinit", "pretrain", *argv]))
    if result.stopped_by is not None:
        return result.exit_code
    report_dir = VarianceReport.from_stats(result.stats_path).save(
        args.report_dir or Path(args.output_dir) / "report", overwrite=True)  # checked above, or inside the fresh run
    print(f"variance report  {report_dir}/ (README.md model card, steady_state.json, plots)")
    print(f'next model       hf-varinit pretrain --config {args.config} --output-dir {args.output_dir}-optimal '
          f'--init "optimal:report={report_dir}"')
    return 0
