"""Reading and writing ``variance.safetensors``: per-tensor weight statistics recorded during training.

File format (``format = "hf_varinit.variance"``, ``format_version = "1"``):

Tensors:
    ``step``           int64   [S]      recorded optimizer steps, strictly increasing
    ``mean``           float32 [S, T]   population mean of each tracked tensor (or slice)
    ``var``            float32 [S, T]   population variance
    ``second_moment``  float32 [S, T]   E[W^2]

Metadata (safetensors str -> str, values JSON-encoded unless they are plain strings): required ``format``,
``format_version`` and ``tracked`` (JSON list, one dict per column of the [S, T] tensors, each with a unique
``key``); optional ``model_type``, ``config``, ``rule``, ``n_layer`` and free fields. The schema, checked on
loading, is `hf_varinit.record.stats_schema`; the training recipe among the free fields (optimizer, lr, lr_schedule,
warmup_steps, ...) is read by `hf_varinit.record.recipe.RunRecipe` (`VarianceStats.recipe`).

Loading never unpickles anything: only ``safetensors.safe_open`` touches the file.

Example:
    >>> stats = save_stats("run/", step=[0, 10], mean=m, var=v, second_moment=s2,  # doctest: +SKIP
    ...                    tracked=[{"key": "layers.0.q", "role": "q", "layer": 0}], metadata={})
    >>> load_stats("run/").series("layers.0.q")  # doctest: +SKIP
"""

from __future__ import annotations

import dataclasses
import importlib.metadata
import json
import os
import struct
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from safetensors import safe_open
from safetensors.numpy import save_file

from hf_varinit.arch.config import num_layers
from hf_varinit.errors import StatsError
from hf_varinit.io_utils import atomic_path
from hf_varinit.record import STAT_NAMES
from hf_varinit.record.recipe import RunRecipe
from hf_varinit.record.stats_schema import check_metadata, check_tracked, decode_meta, encode_meta, json_default

__all__ = ["FORMAT", "FORMAT_VERSION", "STATS_FILENAME", "VarianceStats", "concat", "library_versions", "load_stats",
           "save_stats"]

FORMAT = "hf_varinit.variance"
FORMAT_VERSION = "1"
STATS_FILENAME = "variance.safetensors"
_RESERVED = ("format", "format_version", "tracked")
_MAX_HEADER = 100 * 1024 * 1024  # safetensors' own limit; anything bigger is not our file


def library_versions() -> dict[str, str]:
    """Installed versions of torch, transformers, accelerate and hf_varinit (the ``versions`` metadata field)."""
    versions = {}
    for name in ("torch", "transformers", "accelerate", "hf_varinit"):
        try:
            versions[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:  # e.g. run from a source tree that is not installed
            versions[name] = "unknown"
    return versions


def _resolve(path: str | os.PathLike[str], *, for_write: bool) -> Path:
    try:
        p = Path(path)
        return p / STATS_FILENAME if p.is_dir() or (for_write and p.suffix != ".safetensors") else p
    except (TypeError, OSError) as exc:  # not a path at all, a name too long...
        raise StatsError(f"{str(path)[:80]!r}: not a usable path ({exc}); use a folder or .safetensors file") from None


def _check_arrays(step: np.ndarray, stats: dict[str, np.ndarray], n_tracked: int, where: str) -> None:
    if step.ndim != 1:
        raise StatsError(f"{where}: 'step' must be 1-D [S], got shape {tuple(step.shape)}")
    expected = (step.shape[0], n_tracked)
    for name, arr in stats.items():
        if tuple(arr.shape) != expected:
            raise StatsError(f"{where}: '{name}' has shape {tuple(arr.shape)}, expected [S, T] = {expected} "
                             f"(S = len(step), T = len(tracked))")
    if step.size > 1 and not np.all(np.diff(step) > 0):
        bad = int(np.argmax(np.diff(step) <= 0))
        raise StatsError(f"{where}: steps must be strictly increasing; step[{bad}]={step[bad]} then "
                         f"step[{bad + 1}]={step[bad + 1]}")


def _as_step(step: Any, where: str) -> np.ndarray:
    arr = np.asarray(step)
    if arr.size == 0:
        return np.zeros((0,), dtype=np.int64)
    if not np.issubdtype(arr.dtype, np.integer):
        floating = np.issubdtype(arr.dtype, np.floating)
        if not (floating and np.all(np.isfinite(arr)) and np.all(arr == np.round(arr))):
            raise StatsError(f"{where}: 'step' must hold integers, got dtype {arr.dtype}")
    return arr.astype(np.int64)


def _as_stat(arr: Any, name: str, where: str) -> np.ndarray:
    a = np.asarray(arr)
    if a.dtype.kind not in "fiu":
        raise StatsError(f"{where}: '{name}' must be numeric, got dtype {a.dtype}")
    return a.astype(np.float32)


@dataclasses.dataclass
class VarianceStats:
    """The content of a ``variance.safetensors`` file.

    Attributes:
        step (`np.ndarray`): int64 [S], strictly increasing.
        mean, var, second_moment (`np.ndarray`): float32 [S, T]; column j belongs to ``tracked[j]``.
        tracked (`list[dict]`): one dict per column (``key``, ``name``, ``role``, ``layer``, ``slice``...).
        metadata (`dict`): the file metadata, JSON-decoded where possible (``tracked`` excluded).
        path (`Path` or `None`): where it was read from or last saved.
    """

    step: np.ndarray
    mean: np.ndarray
    var: np.ndarray
    second_moment: np.ndarray
    tracked: list[dict]
    metadata: dict = dataclasses.field(default_factory=dict)
    path: Path | None = None

    def __post_init__(self) -> None:
        where = str(self.path) if self.path else "VarianceStats"
        self.tracked = check_tracked(self.tracked, where)
        self.step = _as_step(self.step, where)
        self.mean, self.var, self.second_moment = (
            _as_stat(getattr(self, n), n, where) for n in STAT_NAMES
        )
        _check_arrays(self.step, {n: getattr(self, n) for n in STAT_NAMES}, len(self.tracked), where)

    # --- lookup -------------------------------------------------------------------------------
    @property
    def keys(self) -> list[str]:
        """The canonical ids of the tracked tensors, in column order."""
        return [t["key"] for t in self.tracked]

    def __len__(self) -> int:
        return int(self.step.shape[0])

    def index(self, key: str) -> int:
        """Column index of ``key``; StatsError listing the known keys if absent."""
        for i, t in enumerate(self.tracked):
            if t["key"] == key:
                return i
        raise StatsError(f"unknown tracked key {key!r}; known keys: {self.keys}")

    def info(self, key: str) -> dict:
        """The ``tracked`` dict of ``key``."""
        return self.tracked[self.index(key)]

    def series(self, key: str, stat: str = "var") -> np.ndarray:
        """The [S] series of ``stat`` ("mean", "var" or "second_moment") for ``key``."""
        if stat not in STAT_NAMES:
            raise StatsError(f"unknown statistic {stat!r}; choose one of {list(STAT_NAMES)}")
        return getattr(self, stat)[:, self.index(key)]

    def layers(self) -> list[int]:
        """Sorted layer indices present among the tracked tensors."""
        return sorted({int(t["layer"]) for t in self.tracked if isinstance(t.get("layer"), int)})

    def keys_for_role(self, role: str) -> list[str]:
        """Keys whose role is ``role``, ordered by layer (keys without a layer first)."""
        rows = [t for t in self.tracked if t.get("role") == role]
        rows.sort(key=lambda t: (t.get("layer") if isinstance(t.get("layer"), int) else -1, t["key"]))
        return [t["key"] for t in rows]

    def roles(self) -> list[str]:
        """Roles present, in first-seen order."""
        return list(dict.fromkeys(t.get("role") for t in self.tracked if t.get("role")))

    @property
    def model_type(self) -> str | None:
        value = self.metadata.get("model_type")
        return None if value is None else str(value)

    @property
    def config(self) -> dict:
        value = self.metadata.get("config")
        return dict(value) if isinstance(value, dict) else {}

    @property
    def rule(self) -> str | None:
        value = self.metadata.get("rule")
        return None if value is None else (value if isinstance(value, str) else json.dumps(value))

    @property
    def n_layer(self) -> int | None:
        value = self.metadata["n_layer"] if "n_layer" in self.metadata else num_layers(self.config)
        return value if isinstance(value, int) and not isinstance(value, bool) else None

    @property
    def recipe(self) -> RunRecipe:
        """How the run was trained (optimizer, lr and its schedule, ...; unknown fields None), from the metadata."""
        return RunRecipe.from_metadata(self.metadata)

    # --- transforms ---------------------------------------------------------------------------
    def _with(self, idx: np.ndarray) -> VarianceStats:
        return VarianceStats(
            step=self.step[idx], mean=self.mean[idx], var=self.var[idx],
            second_moment=self.second_moment[idx], tracked=self.tracked,
            metadata=dict(self.metadata), path=self.path,
        )

    def slice_steps(self, max_step: int) -> VarianceStats:
        """Records with ``step <= max_step`` (used when resuming from a checkpoint at ``max_step``)."""
        return self._with(self.step <= int(max_step))

    def append(self, other: VarianceStats) -> VarianceStats:
        """A new record: ``self`` followed by ``other`` (same keys; all of other's steps must be later)."""
        return concat(self, other)

    def to_dict(self) -> dict:
        """Plain-Python view: steps, ``{stat: {key: [values]}}``, tracked and metadata."""
        out: dict[str, Any] = {"step": self.step.tolist()}
        for name in STAT_NAMES:
            arr = getattr(self, name)
            out[name] = {k: arr[:, j].tolist() for j, k in enumerate(self.keys)}
        out["tracked"] = [dict(t) for t in self.tracked]
        out["metadata"] = dict(self.metadata)
        return out

    def save(self, path: str | os.PathLike[str]) -> Path:
        """Write with :func:`save_stats`; returns the file path."""
        self.path = save_stats(
            path, step=self.step, mean=self.mean, var=self.var, second_moment=self.second_moment,
            tracked=self.tracked, metadata=self.metadata,
        )
        return self.path


def concat(a: VarianceStats, b: VarianceStats) -> VarianceStats:
    """Join two records along steps; ``b``'s columns are reordered to ``a``'s key order.

    Raises:
        StatsError: different key sets, or ``b`` does not start strictly after ``a`` ends.
    """
    if set(a.keys) != set(b.keys):
        missing, extra = sorted(set(a.keys) - set(b.keys)), sorted(set(b.keys) - set(a.keys))
        raise StatsError(f"cannot concatenate records with different tracked keys: missing {missing}, extra {extra}")
    if len(a) and len(b) and b.step[0] <= a.step[-1]:
        raise StatsError(f"cannot concatenate: steps overlap (first record ends at step {int(a.step[-1])}, second "
                         f"starts at step {int(b.step[0])}); use slice_steps({int(b.step[0]) - 1}) on the first record")
    order = [b.index(k) for k in a.keys]
    return VarianceStats(
        step=np.concatenate([a.step, b.step]),
        mean=np.concatenate([a.mean, b.mean[:, order]]),
        var=np.concatenate([a.var, b.var[:, order]]),
        second_moment=np.concatenate([a.second_moment, b.second_moment[:, order]]),
        tracked=a.tracked, metadata={**a.metadata, **b.metadata}, path=a.path,
    )


def save_stats(
    path: str | os.PathLike[str],
    *,
    step: np.ndarray | Sequence[int],
    mean: Any,
    var: Any,
    second_moment: Any,
    tracked: list[dict],
    metadata: dict | None = None,
) -> Path:
    """Validate and atomically write a ``variance.safetensors`` file.

    Args:
        path (`str` or `os.PathLike`): a directory (the file goes inside as ``variance.safetensors``)
            or a file path ending in ``.safetensors``.
        step (`Sequence[int]`): [S] strictly increasing steps.
        mean, var, second_moment (array-like): [S, T] population statistics (stored as float32).
        tracked (`list[dict]`): T dicts with a unique ``key`` each, in column order.
        metadata (`dict`): extra fields; non-string values are JSON-encoded. ``format``,
            ``format_version`` and ``tracked`` are set by this function and override any given value.

    Returns:
        `Path`: the file written.

    Raises:
        StatsError: inconsistent shapes, non-increasing steps, bad or duplicated keys, metadata that is
            not JSON-serializable.
    """
    dest = _resolve(path, for_write=True)
    stats = VarianceStats(step=step, mean=mean, var=var, second_moment=second_moment,
                          tracked=tracked, metadata={}, path=dest)
    meta: dict[str, str] = {}
    for k, v in (metadata or {}).items():
        if not isinstance(k, str):
            raise StatsError(f"{dest}: metadata keys must be strings, got {k!r}")
        if k in _RESERVED or v is None:
            continue
        try:
            meta[k] = encode_meta(v)
        except (TypeError, ValueError) as exc:
            raise StatsError(f"{dest}: metadata field {k!r} cannot be stored as JSON: {exc}") from exc
    meta["format"] = FORMAT
    meta["format_version"] = FORMAT_VERSION
    try:
        meta["tracked"] = json.dumps(stats.tracked, allow_nan=False, default=json_default)
    except (TypeError, ValueError) as exc:
        raise StatsError(f"{dest}: 'tracked' cannot be stored as JSON: {exc}") from exc
    tensors = {
        "step": np.ascontiguousarray(stats.step),
        **{n: np.ascontiguousarray(getattr(stats, n)) for n in STAT_NAMES},
    }
    try:
        with atomic_path(dest) as tmp:
            save_file(tensors, str(tmp), metadata=meta)
    except OSError as exc:  # a parent that is a file, no permission, a full disk...
        raise StatsError(f"cannot write {dest} ({exc.strerror or exc}); give a folder or a .safetensors path") from exc
    return dest


def _check_header(path: Path) -> None:
    """Cheap sanity checks before handing the file to safetensors, for clear messages."""
    size = path.stat().st_size
    with path.open("rb") as fh:
        head = fh.read(9)
    if size < 10 or len(head) < 9:
        raise StatsError(f"{path}: not a safetensors file (only {size} bytes; truncated or empty)")
    (n,) = struct.unpack("<Q", head[:8])
    if 2 <= n <= min(_MAX_HEADER, size - 8) and head[8:9] == b"{":
        return
    if head[:1] == b"\x80":
        what = "looks like a pickle file; it was not unpickled"
    elif head[:2] == b"PK":
        what = "looks like a zip / torch.save file; it was not unpickled"
    elif n > size - 8 and n <= _MAX_HEADER and head[8:9] == b"{":
        what = f"truncated: header of {n} bytes in a {size}-byte file"
    else:
        what = f"invalid header (length field {n} for a {size}-byte file)"
    raise StatsError(f"{path}: not a valid safetensors file ({what})")


def load_stats(path: str | os.PathLike[str]) -> VarianceStats:
    """Read a ``variance.safetensors`` file (or a folder holding one); never unpickles.

    Raises:
        StatsError: the file is missing, not safetensors, truncated or corrupt, of another format or
            version, or its tensors and metadata are inconsistent.
    """
    p = _resolve(path, for_write=False)
    if not p.is_file():
        hint = f" (no {STATS_FILENAME} in that folder)" if Path(path).is_dir() else ""
        raise StatsError(f"{p}: statistics file not found{hint}")
    try:
        _check_header(p)  # (an OSError here, e.g. no permission, is caught below)
        with safe_open(str(p), framework="np") as f:
            raw_meta = f.metadata() or {}
            names = set(f.keys())
            missing = [n for n in ("step", *STAT_NAMES) if n not in names]
            if raw_meta.get("format") != FORMAT:
                raise StatsError(f"{p}: wrong format {raw_meta.get('format')!r}; expected {FORMAT!r} (is this a "
                                 "model checkpoint rather than a variance record?)")
            version = raw_meta.get("format_version")
            if version != FORMAT_VERSION:
                raise StatsError(f"{p}: unsupported format_version {version!r}; this hf_varinit reads version "
                                 f"{FORMAT_VERSION} (upgrade hf_varinit to read newer files)")
            if missing:
                raise StatsError(f"{p}: missing tensor(s) {missing}; found {sorted(names)}")
            arrays = {n: f.get_tensor(n) for n in ("step", *STAT_NAMES)}
    except StatsError:
        raise
    except Exception as exc:  # SafetensorError, OSError, ValueError, OverflowError ...
        raise StatsError(f"{p}: corrupt or truncated safetensors file ({type(exc).__name__}: {exc})") from exc
    if "tracked" not in raw_meta:
        raise StatsError(f"{p}: metadata has no 'tracked' field (the list of tracked tensors)")
    try:
        tracked = json.loads(raw_meta["tracked"])
    except (ValueError, RecursionError) as exc:
        raise StatsError(f"{p}: metadata 'tracked' is not valid JSON: {exc}") from exc
    tracked = check_tracked(tracked, str(p))
    if not np.issubdtype(arrays["step"].dtype, np.integer):
        raise StatsError(f"{p}: tensor 'step' must be integer, got {arrays['step'].dtype}")
    for n in STAT_NAMES:
        if arrays[n].dtype.kind != "f":
            raise StatsError(f"{p}: tensor {n!r} must be floating point, got {arrays[n].dtype}")
    metadata = {k: decode_meta(v) for k, v in raw_meta.items() if k != "tracked"}
    check_metadata(metadata, tracked, str(p))
    return VarianceStats(tracked=tracked, metadata=metadata, path=p, **arrays)
