"""Stopping a run cleanly on Ctrl-C (SIGINT) or SIGTERM (cluster preemption), and the command that continues it.

`StopSignals` is a context manager: while it is open, SIGINT and SIGTERM only *request* a stop; the loop asks
`StopSignals.requested` once per optimizer step, finishes that step, writes a complete checkpoint and the
statistics, and exits with 128 + the signal number (130 for SIGINT, 143 for SIGTERM). Under several processes
the request is summed over the ranks every step, so every rank stops after the same step. The previous handlers
are restored when the context closes.

A second SIGINT in a single-process run stops at once (the usual ``KeyboardInterrupt``). Under a multi-process
launcher, repeated signals are ignored: the launcher forwards the terminal's signal to every worker, so each
worker sees it twice.

`continue_command` writes the command the user ran (``hf-varinit pretrain ...``, ``python -m hf_varinit
pretrain ...`` or the ``accelerate launch ...`` line of the launcher) with ``--resume`` appended.
"""

from __future__ import annotations

import os
import shlex
import shutil
import signal
import sys
import threading
from pathlib import Path

import torch

HANDLED = (signal.SIGINT, signal.SIGTERM)
RESUME_FLAGS = ("--resume", "--no-resume", "--no_resume")
BOOL_WORDS = ("true", "false", "yes", "no", "1", "0")


class StopSignals:
    """Turn SIGINT / SIGTERM into a stop request for the duration of a ``with`` block.

    Example:
        >>> with StopSignals() as stop:  # doctest: +SKIP
        ...     while not stop.requested(accelerator):
        ...         train_one_step()
    """

    def __init__(self, enabled: bool = True):
        self.enabled = enabled  # False: a no-op that never requests a stop
        self.signum: int | None = None  # the first signal received
        self._previous: dict[int, object] = {}
        self._multi_process = int(os.environ.get("WORLD_SIZE", "1")) > 1

    def __enter__(self) -> StopSignals:
        # handlers can only be set from the main thread; elsewhere the run is not interruptible this way
        if self.enabled and threading.current_thread() is threading.main_thread():
            for signum in HANDLED:
                self._previous[signum] = signal.signal(signum, self._handle)
        return self

    def __exit__(self, *exc) -> None:
        self.restore()

    def restore(self) -> None:
        """Put the handlers back that were there before."""
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)
        self._previous = {}

    def _handle(self, signum: int, frame) -> None:
        if self.signum is None:
            self.signum = signum
            return
        if signum == signal.SIGINT and not self._multi_process:  # a second Ctrl-C: stop now, the usual way
            previous = self._previous.get(signum, signal.default_int_handler)
            self.restore()
            if callable(previous):
                previous(signum, frame)
            else:
                raise KeyboardInterrupt

    @property
    def exit_code(self) -> int | None:
        """128 + the signal number (130 SIGINT, 143 SIGTERM), or None when no signal came."""
        return None if self.signum is None else 128 + self.signum

    def requested(self, accelerator=None) -> bool:
        """Whether any process received a stop signal; the same answer on every process (a collective call)."""
        if not self.enabled or accelerator is None or accelerator.num_processes == 1:
            return self.signum is not None
        flag = torch.tensor([self.signum or 0], device=accelerator.device)
        received = int(accelerator.gather(flag).max())  # (processes,) signal numbers: the same answer on every rank
        if received and self.signum is None:
            self.signum = received
        return bool(received)


def signal_name(signum: int) -> str:
    return signal.Signals(signum).name


# ----------------------------------------------------------------------------- the command that continues


def _launcher_command() -> list[str] | None:
    """The ``accelerate launch ...`` command line of the parent process, when this process was started by it."""
    if "ACCELERATE_DYNAMO_BACKEND" not in os.environ:  # set by both of accelerate's launchers
        return None
    try:
        raw = Path(f"/proc/{os.getppid()}/cmdline").read_bytes()
    except OSError:
        return None
    words = [w.decode(errors="replace") for w in raw.split(b"\0") if w]
    if not any(w == "launch" or w.endswith("accelerate.commands.launch") for w in words[:4]):
        return None
    if len(words) > 1 and Path(words[1]).name == "accelerate":  # `python .../bin/accelerate launch ...`
        return [_program(words[1]), *words[2:]]
    return words


def _program(path: str) -> str:
    """A console script's name as a user types it when it is on PATH, else its path."""
    name = Path(path).name
    found = shutil.which(name)
    if found and Path(found).resolve() == Path(path).resolve():
        return name
    return path


def invoked_command(subcommand: str = "pretrain") -> list[str] | None:
    """The words of the command this process runs, when it is ``<program> <subcommand> ...``; else None."""
    launcher = _launcher_command()
    if launcher is not None:
        return launcher
    argv = sys.argv
    if len(argv) < 2 or argv[1] != subcommand:
        return None
    orig = getattr(sys, "orig_argv", [])
    if orig[1:3] == ["-m", "hf_varinit"] and orig[3:] == argv[1:]:  # python -m hf_varinit pretrain ...
        return [orig[0], "-m", "hf_varinit", *argv[1:]]
    if Path(argv[0]).name == "__main__.py":
        return [sys.executable, "-m", "hf_varinit", *argv[1:]]
    return [_program(argv[0]), *argv[1:]]


def continue_command(command: str | list[str]) -> str:
    """``command`` without any ``--resume`` flag, and ``--resume`` appended."""
    words = shlex.split(command) if isinstance(command, str) else list(command)
    kept: list[str] = []
    for word in words:
        if kept and kept[-1] in RESUME_FLAGS and word.lower() in BOOL_WORDS:  # `--resume true`
            kept.pop()
            continue
        kept.append(word)
    kept = [w for w in kept if w not in RESUME_FLAGS and not w.startswith("--resume=")]
    return shlex.join([*kept, "--resume"])
