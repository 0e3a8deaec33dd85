"""The ``hf-varinit`` command (also ``python -m hf_varinit``): one subcommand per job.

    hf-varinit plan --model gpt2 --n-layer 12 --n-embd 256 --rule kaiming
    hf-varinit pretrain --config gpt2-12l-tiny --init kaiming --output-dir runs/k
    hf-varinit report runs/k --output runs/k/report
    hf-varinit calibrate --config gpt2-12l-tiny --rounds 3 --steps 150
    hf-varinit compare --study lm ... / demo
    hf-varinit sweep / compare --study init|optimal / calibrate --model mlp   # the lab: pip install -e experiments/

Every command module has ``add_arguments(parser)`` and ``run(args) -> int | None``: the library's are
``hf_varinit.cli.<command>``; another distribution adds commands through the ``hf_varinit.commands`` entry points
(`hf_varinit.plugins`; the lab adds ``sweep``). A library error (`HFVarInitError`) of any command is printed as
one line, ``hf-varinit <command>: error: <message>``, and the exit code is 1.

Only the module of the command being run is imported (a plugin's command is only listed, from its metadata, until
it runs), and command modules import torch and transformers inside ``run``: ``hf-varinit --help`` and
``hf-varinit <command> --help`` answer without loading them.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence
from types import ModuleType

from hf_varinit.errors import ConfigError, HFVarInitError
from hf_varinit.plugins import COMMANDS as PLUGIN_COMMANDS
from hf_varinit.plugins import entry_names, lab_missing, load_entry

# command -> help; the command's module is hf_varinit.cli.<command>
COMMANDS = {
    "plan": "print the init plan of a model under a rule",
    "pretrain": "pretrain GPT-2 / Llama with Accelerate, recording per-layer Q/K/V variance",
    "report": "turn a run's statistics (or a trained checkpoint) into a variance report",
    "calibrate": "iterate init -> pilot training -> V(W) to the fixed point s0^2 = V(W)",
    "compare": "compare init rules: LM arms x seeds with pretrain runs (--study lm); with the lab, Kaiming vs "
               "Xavier (--study init) and optimal vs He (--study optimal) on MLPs",
    "demo": "the main job: pretrain the 12-layer tiny GPT-2 on the offline corpus with recording",
}
# small models run fastest on few threads on a busy machine: these commands (and a plugin's that sets
# THREADED = True) take --threads
THREADED = ("calibrate", "compare")


def plugin_commands() -> list[str]:
    """The commands installed through the ``hf_varinit.commands`` entry points (a library command's name wins)."""
    return [name for name in entry_names(PLUGIN_COMMANDS) if name not in COMMANDS]


def command_module(name: str) -> ModuleType:
    """The module of the subcommand ``name`` (imported now, not when the CLI starts).

    Raises:
        ConfigError: ``name`` is neither a library command nor an installed plugin's (the message says where a
            lab command lives).
    """
    if name in COMMANDS:
        return importlib.import_module(f"hf_varinit.cli.{name}")
    module = load_entry(PLUGIN_COMMANDS, name)
    if module is None:
        raise ConfigError(lab_missing(PLUGIN_COMMANDS, name, f"hf-varinit {name}") or
                          f"no command {name!r}; valid: {', '.join([*COMMANDS, *plugin_commands()])}")
    return module


def _requested(argv: Sequence[str], names: Sequence[str]) -> str | None:
    """The subcommand named in ``argv`` (the first word that is one of ``names``), or None."""
    return next((a for a in argv if a in names), None)


def build_parser(argv: Sequence[str] | None = None) -> argparse.ArgumentParser:
    """The ``hf-varinit`` parser; each subcommand's parser sets ``args._command``, the command it runs.

    Args:
        argv (`Sequence[str]`, *optional*): the command line it will parse. Then only the subcommand it names gets
            its arguments (and its module imported); by default every subcommand does.
    """
    parser = argparse.ArgumentParser(prog="hf-varinit", description=__doc__.split("\n")[0])
    subparsers = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    plugins = plugin_commands()
    helps = {**COMMANDS, **{name: f"from an installed plugin (the lab): hf-varinit {name} --help" for name in plugins}}
    wanted = set(helps) if argv is None else {_requested(argv, list(helps))}
    for name, help_text in helps.items():
        if name not in wanted:
            sub = subparsers.add_parser(name, help=help_text, description=help_text)
            continue
        module = command_module(name)
        if name in plugins:
            help_text = (module.__doc__ or help_text).strip().split("\n")[0]
        sub = subparsers.add_parser(name, help=help_text, description=help_text,
                                    formatter_class=argparse.RawDescriptionHelpFormatter)
        module.add_arguments(sub)
        if name in THREADED or getattr(module, "THREADED", False):
            sub.add_argument("--threads", type=int, default=None,
                             help="torch CPU threads; 1 is fastest for small models on a busy machine "
                                  "(default: torch's own setting)")
        sub.set_defaults(_command=name)  # not `run`: a command may have an argument of that name (report)
    return parser


def _error(command: str, exc: HFVarInitError) -> int:
    message = " ".join(line.strip() for line in str(exc).splitlines() if line.strip())  # always one line
    print(f"hf-varinit {command}: error: {message}", file=sys.stderr)
    return 1


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``hf-varinit`` and ``python -m hf_varinit``; returns the exit code.

    Args:
        argv (`Sequence[str]`, *optional*): the arguments after the program name (default: ``sys.argv[1:]``).

    Returns:
        `int`: the command's exit code (0 when it returns None), or 1 with a one-line message on a library error.
    """
    argv = sys.argv[1:] if argv is None else list(argv)
    first = next((a for a in argv if not a.startswith("-")), None)
    if first is not None and (missing := lab_missing(PLUGIN_COMMANDS, first, f"hf-varinit {first}")):
        return _error(first, ConfigError(missing))
    try:
        args = build_parser(argv).parse_args(argv)  # a command may refuse a value while parsing (compare --study)
    except HFVarInitError as exc:
        return _error(first or "", exc)
    if getattr(args, "threads", None):
        import torch  # here and only here: the parsing above must not load torch

        torch.set_num_threads(args.threads)
    try:
        code = command_module(args._command).run(args)
    except HFVarInitError as exc:
        return _error(args.command, exc)
    return code if isinstance(code, int) else 0
