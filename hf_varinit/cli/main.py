"""The ``hf-varinit`` command: one subcommand per job.

    hf-varinit plan --model gpt2 --n-layer 12 --n-embd 256 --rule kaiming
    hf-varinit pretrain --config configs/gpt2-12l-tiny.yaml --init kaiming --output-dir runs/k
    hf-varinit report runs/k --output model_cards/gpt2-12l-tiny-kaiming
    hf-varinit calibrate --model mlp --rounds 4 --tol 0.05 --output model_cards/mlp-calibrated
    hf-varinit sweep / compare / demo
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence

from hf_varinit.errors import HFVarInitError

# subcommand -> (module, function adding the arguments, function running it, help)
SUBCOMMANDS = {
    "plan": ("hf_varinit.cli.plan", "add_plan_arguments", "run_plan", "print the init plan of a model under a rule"),
    "pretrain": ("hf_varinit.train.loop", "add_pretrain_arguments", "run_pretrain",
                 "pretrain GPT-2 / Llama with Accelerate, recording per-layer Q/K/V variance"),
    "report": ("hf_varinit.cli.report", "add_report_arguments", "run_report",
               "turn a run's statistics (or a trained checkpoint) into a variance report"),
    "calibrate": ("hf_varinit.cli.calibrate", "add_calibrate_arguments", "run_calibrate_cli",
                  "iterate init -> pilot training -> V(W) to the fixed point s0^2 = V(W)"),
    "sweep": ("hf_varinit.studies.sweep", "add_sweep_arguments", "run_sweep_cli",
              "log sweep of the init std for ReLU MLPs: the stability band"),
    "compare": ("hf_varinit.studies.compare", "add_compare_arguments", "run_compare_cli",
                "compare init rules: Kaiming vs Xavier (--study init), optimal vs He (--study optimal)"),
    "demo": ("hf_varinit.cli.demo", "add_demo_arguments", "run_demo",
             "the main job: pretrain the 12-layer tiny GPT-2 on the offline corpus with recording"),
}


def _configure(name: str, parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """Add subcommand ``name``'s options to ``parser`` and set the function that runs it."""
    module_name, add, run, _ = SUBCOMMANDS[name]
    module = importlib.import_module(module_name)
    getattr(module, add)(parser)
    parser.set_defaults(_run=getattr(module, run))
    return parser


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="hf-varinit", description=__doc__.split("\n")[0])
    subparsers = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name, (*_, help_text) in SUBCOMMANDS.items():
        _configure(name, subparsers.add_parser(name, help=help_text, description=help_text))
    return parser


def subcommand_main(name: str, argv: Sequence[str] | None = None) -> int:
    """``python -m <module>`` for one subcommand: the same options as ``hf-varinit <name>``; errors propagate."""
    parser = _configure(name, argparse.ArgumentParser(prog=f"hf-varinit {name}", description=SUBCOMMANDS[name][3]))
    args = parser.parse_args(argv)
    result = args._run(args)
    return result if isinstance(result, int) else 0


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``hf-varinit``; returns the exit code (1 with a one-line message on bad input)."""
    args = build_parser().parse_args(argv)
    try:
        args._run(args)
    except HFVarInitError as exc:
        print(f"hf-varinit {args.command}: error: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
