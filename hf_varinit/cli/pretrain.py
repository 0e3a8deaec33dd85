"""`hf-varinit pretrain`: parse the options (flags over a ``--config`` YAML), run the Accelerate loop.

    hf-varinit pretrain --config gpt2-12l-tiny --init kaiming --output-dir runs/k
    accelerate launch --multi_gpu --num_processes 2 -m hf_varinit pretrain --config gpt2-12l-tiny

The options, their help and defaults are the dataclasses of `hf_varinit.train.options`. Ctrl-C or SIGTERM stops
after the current step with a complete checkpoint, prints the command that continues the run, and exits with
130 (SIGINT) or 143 (SIGTERM).
"""

from __future__ import annotations

import argparse

from hf_varinit.train.options import add_option_arguments, options_from_namespace

# the loop (torch, accelerate) is imported inside `run`, so `hf-varinit pretrain --help` is fast


def add_arguments(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """Add ``--config`` and one ``--kebab-case`` flag per pretraining option to ``parser``."""
    return add_option_arguments(parser)


def run(args: argparse.Namespace) -> int:
    """Pretrain with the ``--config`` file's options, the flags typed overriding them; return the exit code."""
    from hf_varinit.train.loop import run_pretrain

    return run_pretrain(options_from_namespace(args)).exit_code
