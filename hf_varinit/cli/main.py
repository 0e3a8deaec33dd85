"""The ``hf-varinit`` command (also ``python -m hf_varinit``): one subcommand per job.

    hf-varinit plan --model gpt2 --n-layer 12 --n-embd 256 --rule kaiming
    hf-varinit pretrain --config gpt2-12l-tiny --init kaiming --output-dir runs/k
    hf-varinit report runs/k --output runs/k/report
    hf-varinit calibrate --model mlp --rounds 4 --tol 0.05
    hf-varinit sweep / compare / demo

Every command module has ``add_arguments(parser)`` and ``run(args) -> int | None``. A library error
(`HFVarInitError`) of any command is printed as one line, ``hf-varinit <command>: error: <message>``, and the
exit code is 1.

Only the module of the command being run is imported, and command modules import torch and transformers inside
``run``: ``hf-varinit --help`` and ``hf-varinit <command> --help`` answer without loading them.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence
from types import ModuleType

from hf_varinit.errors import HFVarInitError

# command -> help; the command's module is hf_varinit.cli.<command>
COMMANDS = {
    "plan": "print the init plan of a model under a rule",
    "pretrain": "pretrain GPT-2 / Llama with Accelerate, recording per-layer Q/K/V variance",
    "report": "turn a run's statistics (or a trained checkpoint) into a variance report",
    "calibrate": "iterate init -> pilot training -> V(W) to the fixed point s0^2 = V(W)",
    "sweep": "log sweep of the init std for ReLU MLPs: the stability band",
    "compare": "compare init rules: Kaiming vs Xavier (--study init), optimal vs He (--study optimal), LM arms x "
               "seeds with pretrain runs (--study lm)",
    "demo": "the main job: pretrain the 12-layer tiny GPT-2 on the offline corpus with recording",
}
# the MLP studies run fastest on few threads on a busy machine: they take --threads
THREADED = ("calibrate", "sweep", "compare")


def command_module(name: str) -> ModuleType:
    """The module of the subcommand ``name`` (imported now, not when the CLI starts)."""
    return importlib.import_module(f"hf_varinit.cli.{name}")


def _requested(argv: Sequence[str]) -> str | None:
    """The subcommand named in ``argv`` (the first word that is one), or None."""
    return next((a for a in argv if a in COMMANDS), None)


def build_parser(argv: Sequence[str] | None = None) -> argparse.ArgumentParser:
    """The ``hf-varinit`` parser; each subcommand's parser sets ``args._command``, the command it runs.

    Args:
        argv (`Sequence[str]`, *optional*): the command line it will parse. Then only the subcommand it names gets
            its arguments (and its module imported); by default every subcommand does.
    """
    parser = argparse.ArgumentParser(prog="hf-varinit", description=__doc__.split("\n")[0])
    subparsers = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    wanted = set(COMMANDS) if argv is None else {_requested(argv)}
    for name, help_text in COMMANDS.items():
        sub = subparsers.add_parser(name, help=help_text, description=help_text,
                                    formatter_class=argparse.RawDescriptionHelpFormatter)
        if name not in wanted:
            continue
        command_module(name).add_arguments(sub)
        if name in THREADED:
            sub.add_argument("--threads", type=int, default=None,
                             help="torch CPU threads; 1 is fastest for these small MLPs on a busy machine "
                                  "(default: torch's own setting)")
        sub.set_defaults(_command=name)  # not `run`: a command may have an argument of that name (report)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``hf-varinit`` and ``python -m hf_varinit``; returns the exit code.

    Args:
        argv (`Sequence[str]`, *optional*): the arguments after the program name (default: ``sys.argv[1:]``).

    Returns:
        `int`: the command's exit code (0 when it returns None), or 1 with a one-line message on a library error.
    """
    argv = sys.argv[1:] if argv is None else list(argv)
    args = build_parser(argv).parse_args(argv)
    # Lazy imports here and only here (the parsing above must not load torch): the library registrations that
    # every command relies on (the MLP with the Auto classes, the optimal rule), and torch for --threads.
    import hf_varinit.models  # noqa: F401
    import hf_varinit.report.optimal  # noqa: F401

    if getattr(args, "threads", None):
        import torch

        torch.set_num_threads(args.threads)
    try:
        code = command_module(args._command).run(args)
    except HFVarInitError as exc:
        message = " ".join(line.strip() for line in str(exc).splitlines() if line.strip())  # always one line
        print(f"hf-varinit {args.command}: error: {message}", file=sys.stderr)
        return 1
    return code if isinstance(code, int) else 0
