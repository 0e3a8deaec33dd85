"""The one atomic writer, for files and folders: a reader sees the old content or the whole new one, never a part.

Every writer goes through a temporary file (or folder) in the destination's own directory, so ``os.replace``
is a rename on one file system; the content is fsynced before it replaces the destination.

Example:
    >>> with atomic_path("out/result.bin") as tmp:  # doctest: +SKIP
    ...     tmp.write_bytes(b"...")
    >>> with atomic_folder("out/report") as tmp:  # doctest: +SKIP
    ...     (tmp / "README.md").write_text("...")
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import shutil
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from hf_varinit.errors import HFVarInitError, shown

__all__ = [
    "JsonChecker", "atomic_folder", "atomic_path", "atomic_write", "atomic_write_bytes", "atomic_write_json",
    "atomic_write_text", "blocking_file", "commit_folder", "current_umask", "json_safe", "staging_folder",
]


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


def current_umask() -> int:
    """The process's umask (read by setting it and restoring it at once)."""
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


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
        os.chmod(tmp, 0o666 & ~current_umask())  # some writers (safetensors) create 0600 files
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


def json_safe(obj: Any) -> Any:
    """``obj`` with every non-finite float replaced by None, recursively, for strict JSON (dict keys as strings)."""
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {str(k): json_safe(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [json_safe(v) for v in obj]
    return obj


def blocking_file(path: str | os.PathLike[str]) -> Path | None:
    """The first existing ancestor of ``path`` that is not a folder (so ``path`` cannot be created), or None."""
    for parent in Path(path).absolute().parents:
        if parent.exists():
            return None if parent.is_dir() else parent
    return None


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: Any) -> bool:
    """An int or float that converts to a float (NaN and infinity are numbers here; their meaning is judged later)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return False
    try:
        float(value)
    except OverflowError:  # an int past float range
        return False
    return True


class JsonChecker:
    """Type checks of the fields of a parsed JSON document (a file format's schema, written as explicit checks).

    The first bad field raises ``error`` naming where the document came from, the field's path, its value and what
    it should be: ``steady_state.json: tensors['layers.0.q'].v_w is 'abc'; expected a number or null``.

    Args:
        where (`str`): the document, as messages name it (its path).
        error (`type[HFVarInitError]`): the error raised (StatsError, ReportError...).
    """

    # kind -> (test, what the message says the field should be); `field` also accepts null for every kind
    KINDS: dict[str, tuple[Callable[[Any], bool], str]] = {
        "str": (lambda v: isinstance(v, str), "a string"),
        "bool": (lambda v: isinstance(v, bool), "true or false"),
        "number": (_is_number, "a number"),
        "int": (_is_int, "an integer"),
        "index": (lambda v: _is_int(v) and v >= 0, "an integer >= 0"),
        "count": (lambda v: _is_int(v) and v >= 1, "an integer >= 1"),
        "object": (lambda v: isinstance(v, dict), "a JSON object"),
        "strings": (lambda v: isinstance(v, list) and all(isinstance(x, str) for x in v), "a list of strings"),
        "window": (lambda v: isinstance(v, list) and len(v) == 2 and all(_is_int(x) for x in v),
                   "[start_step, end_step] (two integers)"),
    }

    def __init__(self, where: str, error: type[HFVarInitError]):
        self.where, self.error = where, error

    def fail(self, path: str, value: Any, expected: str) -> None:
        """Raise the error: ``<where>: <path> is <value>; expected <expected>``."""
        raise self.error(f"{self.where}: {path} is {shown(value)}; expected {expected}")

    def field(self, obj: dict, name: str, kind: str, path: str | None = None) -> Any:
        """``obj[name]`` (None when absent) if it is null or of ``kind``; else `fail` naming ``path``."""
        value = obj.get(name)
        test, expected = self.KINDS[kind]
        if value is not None and not test(value):
            self.fail(path or name, value, f"{expected} or null")
        return value

    def fields(self, obj: dict, kinds: dict[str, str], prefix: str = "") -> None:
        """`field` for every ``name: kind`` of ``kinds``; paths are ``prefix + name``."""
        for name, kind in kinds.items():
            self.field(obj, name, kind, prefix + name)


def staging_folder(dest: str | os.PathLike[str], *, name: str | None = None) -> Path:
    """An empty temporary folder next to ``dest`` (normal permissions), to be passed to `commit_folder`.

    Args:
        dest (`str` or `os.PathLike`): the folder that `commit_folder` will create or replace.
        name (`str`, *optional*): a fixed name for the temporary folder, so that several processes write into
            the same one (a leftover of a killed writer is emptied first). By default a unique name.
    """
    dest = Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    if name is not None:
        tmp = dest.parent / name
        if tmp.exists():
            shutil.rmtree(tmp)
        tmp.mkdir()
        return tmp
    while True:  # unlike tempfile.mkdtemp (mode 0700), a folder that others can read once it is published
        tmp = dest.parent / f".{dest.name}.{os.urandom(4).hex()}.tmp"
        try:
            tmp.mkdir()
            return tmp
        except FileExistsError:
            continue


def commit_folder(tmp: Path, dest: str | os.PathLike[str], *, merge: bool = False,
                  complete_marker: str | None = None) -> Path:
    """Publish the finished folder ``tmp`` as ``dest``; returns ``dest``.

    Every file in ``tmp`` is fsynced; then ``complete_marker`` (if given) is written and fsynced last, so a
    reader that checks for it never sees a partial folder. A new ``dest`` is a rename of ``tmp``. An existing
    ``dest`` is replaced whole (``merge=False``), or gets each of ``tmp``'s files replaced atomically while its
    other files stay (``merge=True``).
    """
    dest = Path(dest)
    for f in tmp.rglob("*"):
        if f.is_file():
            _fsync_file(f)
    if complete_marker is not None:
        atomic_write_text(tmp / complete_marker, "complete\n")
    if dest.exists() and merge:
        for f in sorted(tmp.rglob("*")):
            if f.is_file():
                target = dest / f.relative_to(tmp)
                target.parent.mkdir(parents=True, exist_ok=True)
                os.replace(f, target)
        shutil.rmtree(tmp, ignore_errors=True)
    else:
        old = None
        if dest.exists():
            old = dest.with_name(f".{dest.name}.{os.urandom(4).hex()}.old")
            os.replace(dest, old)
        os.replace(tmp, dest)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    _fsync_dir(dest.parent)
    return dest


@contextlib.contextmanager
def atomic_folder(dest: str | os.PathLike[str], *, merge: bool = False,
                  complete_marker: str | None = None) -> Iterator[Path]:
    """Yield an empty temporary folder; on success it becomes ``dest`` (see `commit_folder`), on error it is removed.

    Args:
        dest (`str` or `os.PathLike`): the folder to create or replace. If the block raises, it is untouched.
        merge (`bool`): keep the files of an existing ``dest`` that the new content does not replace.
        complete_marker (`str`, *optional*): a file written last, once everything else is on disk.
    """
    tmp = staging_folder(dest)
    try:
        yield tmp
        commit_folder(tmp, dest, merge=merge, complete_marker=complete_marker)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
