"""The one atomic writer, for files and folders, and the one overwrite rule: a reader sees the old content or the
whole new one, never a part, and an existing folder is replaced only on request.

Every writer goes through a temporary file (or folder) in the destination's own directory, so ``os.replace``
is a rename on one file system; the content is fsynced before it replaces the destination.

Example:
    >>> with atomic_path("out/result.bin") as tmp:  # doctest: +SKIP
    ...     tmp.write_bytes(b"...")
    >>> with atomic_folder("out/report") as tmp:  # doctest: +SKIP
    ...     (tmp / "README.md").write_text("...")
    >>> write_folder("out/study", {"README.md": lambda p: p.write_text("...")}, overwrite=False)  # doctest: +SKIP
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

from hf_varinit.errors import HFVarInitError, ReportError, WriteError, is_write_failure, shown, write_error

__all__ = [
    "JsonChecker", "atomic_folder", "atomic_path", "atomic_write", "atomic_write_bytes", "atomic_write_json",
    "atomic_write_text", "blocking_file", "check_overwrite", "commit_folder", "current_umask", "json_safe",
    "staging_folder", "write_folder",
]

def _fsync_file(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    except OSError as exc:  # a full disk or a failing device often shows here first: say which file
        exc.filename = exc.filename or str(path)
        raise
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
        If the block raises, the temporary file is removed and ``path`` is left untouched; a write failure (see
        `is_write_failure`: a full disk, an I/O error) is raised as a `WriteError` naming ``path``.
    """
    dest = Path(path)
    dest.parent.mkdir(parents=True, exist_ok=True)
    try:
        fd, tmp_name = tempfile.mkstemp(prefix=f".{dest.name}.", suffix=".tmp", dir=dest.parent)
    except OSError as exc:  # no permission, no inode left...
        raise write_error(dest, exc) from exc
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
    except BaseException as exc:
        with contextlib.suppress(OSError):
            tmp.unlink()
        if isinstance(exc, Exception) and is_write_failure(exc):  # a full disk, an I/O error: the library's error
            raise write_error(dest, exc) from exc
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
    ``dest`` is replaced whole (``merge=False``; put back if the rename fails), or gets each of ``tmp``'s files
    replaced atomically while its other files stay (``merge=True``).

    Raises:
        `WriteError`: a file system failure (an fsync, the marker, a rename), naming ``dest``; ``tmp`` is left to the
            caller to remove.
    """
    dest = Path(dest)
    try:
        for f in tmp.rglob("*"):
            if f.is_file():
                _fsync_file(f)  # where a full disk or a failing device often shows first (delayed allocation)
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
            try:
                os.replace(tmp, dest)
            except OSError:
                if old is not None:  # put the previous folder back: a failed commit changes nothing
                    os.replace(old, dest)
                raise
            if old is not None:
                shutil.rmtree(old, ignore_errors=True)
        _fsync_dir(dest.parent)
    except (OSError, WriteError) as exc:
        raise write_error(dest, exc) from exc
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


def check_overwrite(dest: str | os.PathLike[str], overwrite: bool, *,
                    error: type[HFVarInitError] = ReportError) -> Path:
    """The one overwrite rule of the folders the library writes (reports of runs, studies, calibrations); returns
    ``dest`` as a `Path`.

    An absent folder or an existing empty one (as ``save_pretrained`` accepts) may be written; an existing folder
    with files in it only with ``overwrite=True`` (it is then replaced whole). A file at ``dest``, or a file where
    one of its parent folders belongs, is always refused. Call it before the work, not after it.

    Args:
        dest (`str` or `os.PathLike`): the folder about to be written.
        overwrite (`bool`): replace an existing, non-empty ``dest``.
        error (`type[HFVarInitError]`): the error raised (default `ReportError`).

    Raises:
        error: ``dest`` is not a path, is a file, lies under a file, or is a non-empty folder and ``overwrite`` is
            False; the message names the path and the fix.

    Example:
        >>> check_overwrite("runs/report", overwrite=False)  # doctest: +SKIP
        PosixPath('runs/report')
    """
    if not isinstance(dest, (str, os.PathLike)):
        raise error(f"folder={shown(dest)} is not a path; give the folder as a str or Path")
    path = Path(dest)
    if path.exists() and not path.is_dir():
        raise error(f"{path} exists and is not a folder; choose a folder path (or remove the file)")
    if not path.exists() and (blocker := blocking_file(path)) is not None:
        raise error(f"cannot write the report folder {path}: {blocker} is a file, so no folder can be made inside "
                    "it; choose a path under a folder")
    if path.is_dir() and not overwrite and any(path.iterdir()):
        raise error(f"{path} already exists; pass --overwrite (overwrite=True in Python) to replace it whole, "
                    "or choose another folder")
    return path


def write_folder(dest: str | os.PathLike[str], writers: dict[str, Callable[[Path], None]], *,
                 overwrite: bool = False, error: type[HFVarInitError] = ReportError) -> Path:
    """Write a folder whole: every ``writers[name](path)`` writes one file (or sub-folder) into a staging folder,
    which then becomes ``dest`` (`atomic_folder`). If a writer raises, ``dest`` is untouched, nothing is left
    behind and the writer's exception propagates as it is, except a write failure (`is_write_failure`), which
    becomes a `WriteError` naming ``dest``. `check_overwrite` decides whether ``dest`` may be written.

    Args:
        dest (`str` or `os.PathLike`): the folder.
        writers (`dict[str, Callable[[Path], None]]`): name (relative to ``dest``) -> its writer, called with the
            path to write. The name ``""`` hands the writer the staging folder itself (a writer of many files).
        overwrite (`bool`): replace an existing, non-empty ``dest`` (all of it: none of its old files stay).
        error (`type[HFVarInitError]`): the error raised for a refused ``dest``, or when the staging folder cannot
            be made or put in place (default `ReportError`).

    Returns:
        `Path`: ``dest``.

    Raises:
        error: ``dest`` is refused by `check_overwrite` (nothing is written), or the file system refused the staging
            folder (no permission...; nothing is left).
        `WriteError`: a write failed (a full disk, an I/O error, in a writer, an fsync or the rename), naming
            ``dest`` and the file; ``dest`` keeps its previous content and the staging folder is removed.

    Example:
        >>> write_folder("out/study", {"README.md": lambda p: p.write_text("# Study")})  # doctest: +SKIP
        PosixPath('out/study')
    """
    path = check_overwrite(dest, overwrite, error=error)
    in_writer = False
    try:
        with atomic_folder(path) as tmp:
            for name, writer in writers.items():
                target = tmp / name
                target.parent.mkdir(parents=True, exist_ok=True)
                in_writer = True
                writer(target)
                in_writer = False
    except WriteError as exc:  # a file of the folder (named by its staging path), or the commit
        raise write_error(path, exc, what="the folder") from exc
    except Exception as exc:
        if in_writer and is_write_failure(exc):  # a writer's own OSError, safetensors' or torch's I/O error
            raise write_error(path, exc, what="the folder") from exc
        if in_writer or not isinstance(exc, OSError):
            raise
        raise error(f"cannot write the report folder {path}: {exc.strerror or exc}") from exc
    return path
