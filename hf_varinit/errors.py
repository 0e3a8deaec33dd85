"""The library's own error types: every user-facing failure is one of these (and `shown`, to name a value in one;
`write_error`, to turn a failed write, whatever the writer raised, into one `WriteError` naming the path and the fix).
"""

import errno
import os
import re
import shutil
from pathlib import Path


class HFVarInitError(Exception):
    """Base class of every error hf_varinit raises on bad input."""


class RuleError(HFVarInitError, ValueError):
    """A rule spec that cannot be parsed or validated."""


class RoleError(HFVarInitError, ValueError):
    """A model whose parameters cannot be mapped to roles."""


class StatsError(HFVarInitError, ValueError):
    """A statistics file that is missing, truncated, corrupt or of the wrong format."""


class ReportError(HFVarInitError, ValueError):
    """A variance report that cannot be read or does not fit the model."""


class DataError(HFVarInitError, ValueError):
    """A dataset that is empty, too short, or cannot be loaded."""


class ConfigError(HFVarInitError, ValueError):
    """A training or study configuration with an unknown key or an invalid value."""


class NonFiniteLossError(HFVarInitError, RuntimeError):
    """Training produced a NaN or infinite loss."""


class WriteError(HFVarInitError, RuntimeError):
    """A file or folder that could not be written: a full disk, an I/O error, no permission.

    Whatever the library was writing is left as it was before (old content, no temporary file). The OS error it
    wraps is the ``__cause__``; ``errno`` is its number when known (``errno.ENOSPC``, ``errno.EIO``...), ``path`` the
    destination named in the message. Not an `OSError`: every library error is caught as `HFVarInitError`.
    """

    def __init__(self, message: str, *, path: str | None = None, errno: int | None = None, reason: str = ""):
        super().__init__(message)
        self.path, self.errno, self.reason = path, errno, reason


class LostRankError(HFVarInitError, RuntimeError):
    """A process of a multi-process run died or stopped answering in a collective (all-reduce, barrier, sharded save).

    ``step`` is the last optimizer step the run completed, ``ranks`` the missing ranks when known (else empty).
    """

    def __init__(self, message: str, *, step: int | None = None, ranks: tuple[int, ...] = ()):
        super().__init__(message)
        self.step, self.ranks = step, tuple(ranks)


def shown(value: object, limit: int = 80) -> str:
    """``repr(value)`` cut to about ``limit`` characters (the middle elided), for one-line error messages.

    Example:
        >>> shown("a" * 1000, limit=20)
        "'aaaaaaa...aaaaaaa'"
    """
    try:
        text = repr(value)
    except ValueError:  # an int past Python's digit limit for str()
        text = f"<an integer of {value.bit_length()} bits>" if isinstance(value, int) else f"<{type(value).__name__}>"
    if len(text) <= limit:
        return text
    half = max(1, (limit - 3) // 2)
    return text[:half] + "..." + text[-half:]


# ----------------------------------------------------------------------------- a failed write -> one WriteError

_DISK_FULL = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EFBIG})
_REFUSED = frozenset({errno.EACCES, errno.EPERM, errno.EROFS})
_OS_ERROR_IN_TEXT = re.compile(r"\(os error (\d+)\)")  # safetensors' writer: "I/O error: ... (os error 28)"
_TORCH_WRITER = ("PytorchStreamWriter", "inline_container")  # torch.save on a full disk: "unexpected pos ..."


def is_write_failure(exc: BaseException) -> bool:
    """Whether ``exc`` is a writer reporting a failed write: an `OSError`, safetensors' I/O error (a
    ``SafetensorError``, not an OSError), torch.save's stream-writer error (a `RuntimeError`), or a `WriteError`."""
    if isinstance(exc, (OSError, WriteError)):
        return True
    text = str(exc)
    if type(exc).__name__ == "SafetensorError":
        return "I/O error" in text or _OS_ERROR_IN_TEXT.search(text) is not None
    return isinstance(exc, RuntimeError) and any(word in text for word in _TORCH_WRITER)


def _errno_of(exc: BaseException) -> int | None:
    if isinstance(exc, (OSError, WriteError)):
        return exc.errno
    match = _OS_ERROR_IN_TEXT.search(str(exc))
    return int(match.group(1)) if match else None


def _free_bytes(path: Path) -> int | None:
    """The free space of the file system holding ``path`` (its first existing ancestor), or None."""
    for folder in (path, *path.absolute().parents):
        if folder.exists():
            try:
                return shutil.disk_usage(folder).free
            except OSError:
                return None
    return None


def _size(free: int | None) -> str:
    if free is None:
        return "unknown"
    value = float(free)
    for unit in ("B", "KiB", "MiB"):
        if value < 1024:
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    return f"{value:.1f} GiB"


def write_error(path: str | os.PathLike[str], exc: BaseException, *, what: str = "",
                then: str = "run again") -> WriteError:
    """The library's error for a failed write of ``path``: one line naming the path, the error and the fix.

    Args:
        path (`str` or `os.PathLike`): the destination, as the user knows it (not a temporary name).
        exc (`BaseException`): the writer's error (see `is_write_failure`); a `WriteError` about a file inside
            ``path`` (a staging folder's) keeps its reason and names that file.
        what (`str`): how the message names ``path``, e.g. ``"the checkpoint"``.
        then (`str`): what to do once the cause is fixed (default ``"run again"``).

    Returns:
        `WriteError` (raise it ``from exc``), e.g. ``cannot write the report folder out/r (writing
        qkv_variance.png): No space left on device [Errno 28: ENOSPC]; free space on that file system (0 B free
        now) or choose another folder, then run again``.
    """
    dest = Path(path)
    code = _errno_of(exc)
    inner = exc.path if isinstance(exc, WriteError) else getattr(exc, "filename", None)
    if isinstance(exc, WriteError) and exc.reason:
        reason = exc.reason
    elif code is not None:
        reason = f"{os.strerror(code)} [Errno {code}: {errno.errorcode.get(code, '?')}]"
    else:
        reason = shown(" ".join(str(exc).split()) or type(exc).__name__, limit=200).strip("'\"")
    free = _free_bytes(dest)
    if code is None and free is not None and free < 1 << 20:  # torch.save's "unexpected pos" on a full disk
        reason += " (the file system is full)"
    if code in _DISK_FULL or (code is None and free is not None and free < 1 << 20):
        fix = f"free space on that file system ({_size(free)} free now) or choose another folder, then {then}"
    elif code == errno.EIO:
        fix = f"the storage reported an I/O error: check the disk (dmesg, df) or write to another folder, then {then}"
    elif code in _REFUSED:
        fix = f"make the folder writable or choose another one, then {then}"
    else:
        fix = f"check that the folder is writable and has space ({_size(free)} free now), then {then}"
    detail = ""
    if inner is not None and Path(inner) != dest and not Path(inner).name.startswith(f".{dest.name}."):
        detail = f" (writing {Path(inner).name})"  # a file inside dest (not dest's own temporary file)
    where = f"{what} {dest}" if what else str(dest)
    return WriteError(f"cannot write {where}{detail}: {reason}; {fix}", path=str(dest), errno=code, reason=reason)
