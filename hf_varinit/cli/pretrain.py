"""`hf-varinit pretrain`: parse the options (flags over a ``--config`` YAML), run the Accelerate loop.

    hf-varinit pretrain --config gpt2-12l-tiny --init kaiming --output-dir runs/k
    accelerate launch --multi_gpu --num_processes 2 -m hf_varinit pretrain --config gpt2-12l-tiny

The options, their help and defaults are the dataclasses of `hf_varinit.train.run_config`, made flags by
`hf_varinit.cli.flags`. Ctrl-C or SIGTERM stops after the current step with a complete checkpoint, prints the
command that continues the run, and exits with 130 (SIGINT) or 143 (SIGTERM).
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence

from hf_varinit.cli.flags import FlagParser, add_dataclass_flags, flag_values
from hf_varinit.cli.main import _error
from hf_varinit.errors import LostRankError
from hf_varinit.train.run_config import GROUPS, PretrainOptions, build_options, bundled_configs

# the loop (torch, accelerate, transformers) is imported inside `run`, so `hf-varinit pretrain --help` is fast

DESCRIPTION = "Pretrain a GPT-2 / Llama with Accelerate and record V(W)."


def add_arguments(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """Add ``--config`` and one ``--kebab-case`` flag per pretraining option (a section per group) to ``parser``."""
    configs = ", ".join(sorted(n[:-5] for n in bundled_configs()))
    parser.add_argument("--config", default=None, metavar="FILE_OR_NAME",
                        help=f"YAML file of options (sections model/data/training, or flat keys), or a bundled "
                             f"config: {configs}; flags typed here override it (default: none, the defaults below)")
    for group, cls in GROUPS.items():
        add_dataclass_flags(parser, cls, group=f"{group} options")
    return parser


def options_from_namespace(args: argparse.Namespace) -> PretrainOptions:
    """`PretrainOptions` from parsed flags: the ``--config`` file first, the flags typed on top."""
    values = {name: value for cls in GROUPS.values() for name, value in flag_values(args, cls).items()}
    return build_options(getattr(args, "config", None), **values)


def parse_options(argv: Sequence[str] | None = None) -> PretrainOptions:
    """Parse a ``hf-varinit pretrain`` command line (``sys.argv[1:]`` when None) into `PretrainOptions`.

    Args:
        argv (`list[str]`, *optional*): e.g. ``["--config", "gpt2-tiny-test", "--max-steps", "4"]``.

    Raises:
        `ConfigError`: an unknown flag or YAML key, or a value its option rejects (the message names it).
    """
    parser = add_arguments(FlagParser(prog="hf-varinit pretrain", description=DESCRIPTION))
    return options_from_namespace(parser.parse_args(argv))


def run(args: argparse.Namespace) -> int:
    """Pretrain with the ``--config`` file's options, the flags typed overriding them; return the exit code.

    After a lost rank (`LostRankError`) the process prints its one line and leaves at once (exit code 1): a broken
    gloo group cannot be torn down in-process (freeing the model may wait forever on gloo's threads).
    """
    from hf_varinit.train.loop import run_pretrain

    try:
        return run_pretrain(options_from_namespace(args)).exit_code
    except LostRankError as exc:
        _error("pretrain", exc)
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(1)
