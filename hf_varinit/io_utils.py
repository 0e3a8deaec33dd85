"""Atomic file writes: a reader sees either the old file or the whole new one, never a truncated file.

Every writer goes through a temporary file in the destination's own directory (so ``os.replace`` is
a rename on one file system), which is flushed and fsynced before it replaces the destination.

Example:
    >>> with atomic_path("out/result.bin") as tmp:  # doctest: +SKIP
    ...     tmp.write_bytes(b"...")
"""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

__all__ = ["atomic_path", "atomic_write", "atomic_write_bytes", "atomic_write_json", "atomic_write_text"]


def _fsync_file(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _fsync_dir(directory: Path) -> None:
    """Persist a rename on POSIX; silently skipped where directories cannot be opened (Windows)."""
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike[str]) -> Iterator[Path]:
    """Yield a temporary path next to ``path``; on success it is fsynced and moved onto ``path``.

    Args:
        path (`str` or `os.PathLike`): the final destination. Its parent directory is created.

    Yields:
        `Path`: a not-yet-existing file path in the same directory. Write the whole content there.
        If the block raises, the temporary file is removed and ``path`` is left untouched.
    """
    dest = Path(path)
    dest.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{dest.name}.", suffix=".tmp", dir=dest.parent)
    os.close(fd)
    tmp = Path(tmp_name)
    tmp.unlink()  # writers (e.g. safetensors) expect to create the file themselves
    try:
        yield tmp
        if not tmp.exists():
            raise FileNotFoundError(f"atomic write of {dest}: the writer did not create {tmp}")
        _fsync_file(tmp)
        os.replace(tmp, dest)
        _fsync_dir(dest.parent)
    except BaseException:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise


def atomic_write(path: str | os.PathLike[str], writer: Callable[[Path], None]) -> Path:
    """Call ``writer(tmp_path)`` and atomically move the result onto ``path``; return ``path``."""
    with atomic_path(path) as tmp:
        writer(tmp)
    return Path(path)


def atomic_write_bytes(path: str | os.PathLike[str], data: bytes) -> Path:
    """Atomically write ``data`` to ``path``."""
    return atomic_write(path, lambda tmp: tmp.write_bytes(data))


def atomic_write_text(path: str | os.PathLike[str], text: str, encoding: str = "utf-8") -> Path:
    """Atomically write ``text`` to ``path``."""
    return atomic_write(path, lambda tmp: tmp.write_text(text, encoding=encoding))


def atomic_write_json(path: str | os.PathLike[str], obj: Any, *, indent: int | None = 2) -> Path:
    """Atomically write ``obj`` as JSON (strict: NaN and infinity are refused) to ``path``."""
    text = json.dumps(obj, indent=indent, sort_keys=False, allow_nan=False) + "\n"
    return atomic_write_text(path, text)
