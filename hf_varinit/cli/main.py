"""The ``hf-varinit`` command (also ``python -m hf_varinit``): one subcommand per job.

    hf-varinit plan --model gpt2 --n-layer 12 --n-embd 256 --rule kaiming
    hf-varinit pretrain --config configs/gpt2-12l-tiny.yaml --init kaiming --output-dir runs/k
    hf-varinit report runs/k --output model_cards/gpt2-12l-tiny-kaiming
    hf-varinit calibrate --model mlp --rounds 4 --tol 0.05 --output model_cards/mlp-calibrated
    hf-varinit sweep / compare / demo

Every command module has ``add_arguments(parser)`` and ``run(args) -> int | None``. A library error
(`HFVarInitError`) of any command is printed as one line, ``hf-varinit <command>: error: <message>``, and the
exit code is 1.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

import torch

from hf_varinit.cli import calibrate, compare, demo, plan, pretrain, report, sweep
from hf_varinit.errors import HFVarInitError

# command -> (adds its arguments to a parser, runs it on the parsed arguments, help)
COMMANDS = {
    "plan": (plan.add_arguments, plan.run, "print the init plan of a model under a rule"),
    "pretrain": (pretrain.add_arguments, pretrain.run,
                 "pretrain GPT-2 / Llama with Accelerate, recording per-layer Q/K/V variance"),
    "report": (report.add_arguments, report.run,
               "turn a run's statistics (or a trained checkpoint) into a variance report"),
    "calibrate": (calibrate.add_arguments, calibrate.run,
                  "iterate init -> pilot training -> V(W) to the fixed point s0^2 = V(W)"),
    "sweep": (sweep.add_arguments, sweep.run, "log sweep of the init std for ReLU MLPs: the stability band"),
    "compare": (compare.add_arguments, compare.run,
                "compare init rules: Kaiming vs Xavier (--study init), optimal vs He (--study optimal)"),
    "demo": (demo.add_arguments, demo.run,
             "the main job: pretrain the 12-layer tiny GPT-2 on the offline corpus with recording"),
}
# the MLP studies run fastest on few threads on a busy machine: they take --threads
THREADED = ("calibrate", "sweep", "compare")


def build_parser() -> argparse.ArgumentParser:
    """The ``hf-varinit`` parser; each subcommand's parser sets ``args._run``, the function that runs it."""
    parser = argparse.ArgumentParser(prog="hf-varinit", description=__doc__.split("\n")[0])
    subparsers = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name, (add_arguments, run, help_text) in COMMANDS.items():
        sub = subparsers.add_parser(name, help=help_text, description=help_text)
        add_arguments(sub)
        if name in THREADED:
            sub.add_argument("--threads", type=int, default=None,
                             help="torch CPU threads (default: leave torch's setting); 1 is fastest for these small "
                                  "MLPs on a busy machine")
        sub.set_defaults(_run=run)  # not `run`: a command may have an argument of that name (report)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``hf-varinit`` and ``python -m hf_varinit``; returns the exit code.

    Args:
        argv (`Sequence[str]`, *optional*): the arguments after the program name (default: ``sys.argv[1:]``).

    Returns:
        `int`: the command's exit code (0 when it returns None), or 1 with a one-line message on a library error.
    """
    args = build_parser().parse_args(argv)
    if getattr(args, "threads", None):
        torch.set_num_threads(args.threads)
    try:
        code = args._run(args)
    except HFVarInitError as exc:
        print(f"hf-varinit {args.command}: error: {exc}", file=sys.stderr)
        return 1
    return code if isinstance(code, int) else 0
