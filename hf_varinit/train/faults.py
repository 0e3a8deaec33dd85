"""How a run meets a fault: a lost rank, a failed write. Every rank stops with the same one-line error.

A lost rank. When a process dies, a launcher such as ``torchrun`` or ``accelerate launch`` tears the others down.
Without one (``srun``, processes started one by one) the others would wait in their next collective. Each waits at
most ``--collective-timeout`` seconds (the process group's timeout, `build.make_accelerator`); gloo also fails at
once when a peer's connection closes. `FaultGuard` turns that failure, at the loop boundary, into a
`LostRankError` naming the last step completed and the missing rank (the other one of 2; with more processes, the
ranks that did not report to the rendezvous store within a few seconds).

A failed write. `all_ranks_write` runs a block that writes on some ranks (the main one, or every rank its part of a
checkpoint), then lets every rank learn whether any rank's write failed, so all raise the same `WriteError`: no rank
waits for one that gave up, and no checkpoint is committed with a rank's part missing. A full disk met anywhere else
in the run (``metrics.jsonl``, a cache) reaches `FaultGuard` as an `OSError` and becomes a `WriteError` naming its
file.
"""

from __future__ import annotations

import contextlib
import errno
import os
import time
from collections.abc import Callable, Iterator
from datetime import timedelta
from pathlib import Path

import torch.distributed as dist
from accelerate import Accelerator

from hf_varinit.errors import HFVarInitError, LostRankError, WriteError, is_write_failure, write_error

_DISK_FULL_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EFBIG, errno.EROFS})  # only a write meets these

# what gloo, NCCL and the store say when a peer died or stopped answering (torch 2.x raises RuntimeError or a
# DistError subclass)
_LOST_WORDS = ("Connection closed by peer", "Connection reset by peer", "Timed out waiting", "Broken pipe",
               "ProcessGroupGloo", "ProcessGroupNCCL", "gloo/transport", "Socket Timeout")
_TIMED_OUT_WORDS = ("Timed out", "timed out", "Timeout", "timeout")
DRAIN_S = 1.0  # after a lost rank: time for gloo's threads to release the failed collectives' tensors
REPORT_WAIT_S = 3.0  # with more than 2 processes: how long survivors wait for each other to report to the store


def is_collective_failure(exc: BaseException) -> bool:
    """Whether ``exc`` (or an exception it wraps, e.g. in a ``torch.distributed.checkpoint`` failure) is a collective
    that failed because a peer died or did not answer in time."""
    seen: set[int] = set()
    while exc is not None and id(exc) not in seen and not isinstance(exc, HFVarInitError):
        seen.add(id(exc))
        if isinstance(exc, getattr(dist, "DistError", ())):
            return True
        if isinstance(exc, RuntimeError) and any(word in str(exc) for word in _LOST_WORDS):
            return True
        failures = getattr(exc, "failures", None)  # dcp's CheckpointException: rank -> the exception it raised
        if isinstance(failures, dict) and any(isinstance(f, BaseException) and is_collective_failure(f)
                                              for f in failures.values()):
            return True
        exc = exc.__cause__ or exc.__context__
    return False


def missing_ranks(rank: int, world_size: int, tag: str, *, store=None, wait_s: float = REPORT_WAIT_S
                  ) -> tuple[int, ...]:
    """The ranks that are gone, as far as this rank can tell: of 2 processes, the other one; of more, those that did
    not report to the rendezvous store (``MASTER_ADDR:MASTER_PORT``) within ``wait_s`` seconds. Empty when unknown.

    Args:
        tag (`str`): the same on every survivor of one failure (e.g. the step), so the reports meet.
        store (`torch.distributed.Store`, *optional*): default: a new client of the launcher's store.
    """
    if world_size == 2:
        return (1 - rank,)
    try:
        if store is None:
            store = dist.TCPStore(os.environ["MASTER_ADDR"], int(os.environ["MASTER_PORT"]), is_master=False,
                                  timeout=timedelta(seconds=wait_s), wait_for_workers=False)
        store.set(f"hf_varinit/alive/{tag}/{rank}", "1")
        deadline = time.monotonic() + wait_s
        while True:
            alive = [r for r in range(world_size) if store.check([f"hf_varinit/alive/{tag}/{r}"])]
            if len(alive) == world_size or time.monotonic() > deadline:
                break
            time.sleep(0.1)
    except (KeyError, ValueError, RuntimeError, OSError):  # no store to ask (it lived on the rank that died?)
        return ()
    return tuple(r for r in range(world_size) if r not in alive)


class FaultGuard:
    """A ``with`` block around a run: a collective failed by a dead or silent rank becomes one `LostRankError`, and
    a full disk (``ENOSPC``, ``EDQUOT``, ``EFBIG``, ``EROFS``) that escaped the writers one `WriteError` naming its
    file.

    Set ``guard.state`` (the run's `RunState`) once the run has one: the lost-rank message names its step.

    Args:
        accelerator (`Accelerator`): the run's; its process index and count are named.
        timeout_s (`float`): the collective timeout the process group was built with.
        output_dir (`Path`): the run's folder (``checkpoints/`` in it is where ``--resume`` continues from).
    """

    def __init__(self, accelerator: Accelerator, timeout_s: float, output_dir: Path):
        self.rank, self.world_size = accelerator.process_index, accelerator.num_processes
        self.timeout_s, self.output_dir, self.checkpoints = timeout_s, output_dir, output_dir / "checkpoints"
        self.state = None

    def __enter__(self) -> FaultGuard:
        return self

    def __exit__(self, kind, exc, tb) -> bool:
        if isinstance(exc, OSError) and exc.errno in _DISK_FULL_ERRNOS:
            raise write_error(exc.filename or self.output_dir, exc, then="continue with --resume (or run again when "
                              "no checkpoint was complete)") from exc
        if self.world_size == 1 or not isinstance(exc, Exception) or not is_collective_failure(exc):
            return False
        time.sleep(DRAIN_S)  # GIL released: gloo's threads finish the failed work before the model can be freed
        step = None if self.state is None else int(self.state.step)
        lost = missing_ranks(self.rank, self.world_size, f"step{step}")
        who = (f"rank {', '.join(map(str, lost))} of {self.world_size}" if lost
               else f"a process of the {self.world_size}")
        text = str(exc)
        why = (f"it did not answer within --collective-timeout {self.timeout_s:g} s (hung or gone)"
               if any(w in text for w in _TIMED_OUT_WORDS) else "its connection closed (the process died)")
        when = f"after step {step}" if step is not None else "before the first step"
        raise LostRankError(
            f"{who} was lost {when}: {why}; rank {self.rank} stops too. Restart all {self.world_size} processes with "
            f"--resume to continue from the newest complete checkpoint in {self.checkpoints}",
            step=step, ranks=lost) from exc


@contextlib.contextmanager
def all_ranks_write(accelerator: Accelerator, path: Path, *, what: str, then: Callable[[], str] = lambda: "run again",
                    cleanup: Callable[[], None] | None = None) -> Iterator[None]:
    """Run the block (a write on this rank, or nothing), then agree with every rank on its outcome.

    A write failure (`hf_varinit.errors.is_write_failure`) on any rank makes every rank call ``cleanup`` and raise
    the same `WriteError` naming ``path`` (and the rank, with several processes). Any other exception propagates as
    it is. The agreement is a collective (an all-gather of the error messages), so it also waits for every rank.

    Args:
        path (`Path`): what the block writes, as the message names it.
        what (`str`): how the message names it, e.g. ``"the checkpoint"``.
        then (`Callable[[], str]`): what to do once the cause is fixed, asked only on a failure.
        cleanup (`Callable[[], None]`, *optional*): removes what the failed write left (e.g. a staging folder).
    """
    failure: WriteError | None = None
    try:
        yield
    except Exception as exc:
        if not is_write_failure(exc) or is_collective_failure(exc):
            raise
        failure = write_error(path, exc, what=what, then=then())
        failure.__cause__ = exc
    messages = [None if failure is None else str(failure)]
    if accelerator.num_processes > 1:
        messages = [None] * accelerator.num_processes
        dist.all_gather_object(messages, None if failure is None else str(failure))
    failed = [(rank, message) for rank, message in enumerate(messages) if message is not None]
    if not failed:
        return
    if cleanup is not None:
        cleanup()
    if failure is not None and accelerator.num_processes == 1:
        raise failure
    rank, message = failed[0]
    raise WriteError(f"rank {rank} of {accelerator.num_processes}: {message}", path=str(path),
                     errno=failure.errno if failure is not None else None) from (failure.__cause__ if failure else None)
