"""The schema of the metadata of ``variance.safetensors``, and its encoding (safetensors metadata is str -> str).

Required metadata keys (a file without them is refused):

* ``format``: ``"hf_varinit.variance"``;
* ``format_version``: ``"1"``;
* ``tracked``: a JSON list with one object per column of the [S, T] tensors, each with a unique string ``key``
  (``"layers.0.q"``, ``"embedding"``; a key ``layers.<i>.<role>`` names its block) and optionally ``role``,
  ``name``, ``slice`` (strings), ``layer`` (an integer >= 0, the one the key names), ``fan_in``, ``fan_out``,
  ``numel`` (integers >= 0) and ``init_std`` (a number).

Optional keys, JSON-encoded unless plain strings: ``model_type`` (str), ``config`` (the model's ``to_dict()``;
its sizes such as ``n_embd`` positive integers), ``n_layer`` (an integer >= 1), ``rule`` and free fields
(``seed``, ``optimizer``, ``lr``, ``batch_size``, ``mixed_precision``, ``versions``, ``dataset``, ``source``...).
`check_metadata` checks a decoded file against this, naming the offending field.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from hf_varinit.arch.config import check_config_sizes
from hf_varinit.arch.keys import parse_layer_key
from hf_varinit.errors import ConfigError, StatsError, shown
from hf_varinit.io_utils import JsonChecker

__all__ = ["check_metadata", "check_tracked", "decode_meta", "encode_meta", "json_default"]

# field -> kind of `JsonChecker.KINDS` (each may also be null)
METADATA = {"model_type": "str", "config": "object", "n_layer": "count"}
TRACKED = {"role": "str", "name": "str", "slice": "str", "layer": "index", "fan_in": "index", "fan_out": "index",
           "numel": "index", "init_std": "number"}


def encode_meta(value: Any) -> str:
    """Plain strings stay readable; everything else (and strings that would parse as JSON) is JSON."""
    if isinstance(value, str):
        try:
            decoded = json.loads(value)
        except ValueError:
            return value
        return value if decoded == value else json.dumps(value)
    return json.dumps(value, allow_nan=False, default=json_default)


def json_default(obj: Any) -> Any:
    """JSON for the numpy values and paths that metadata may hold."""
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    if isinstance(obj, Path):
        return str(obj)
    raise TypeError(f"metadata value of type {type(obj).__name__} is not JSON-serializable: {shown(obj)}")


def decode_meta(value: str) -> Any:
    """A metadata string JSON-decoded, or as it is when it is not JSON."""
    try:
        return json.loads(value)
    except (ValueError, RecursionError):
        return value


def check_tracked(tracked: Any, where: str) -> list[dict]:
    """A copy of ``tracked`` if it is a list of dicts, each with a unique non-empty string ``key``."""
    if not isinstance(tracked, list) or not all(isinstance(t, dict) for t in tracked):
        raise StatsError(f"{where}: 'tracked' must be a list of dicts, got {type(tracked).__name__}")
    keys = []
    for i, t in enumerate(tracked):
        key = t.get("key")
        if not isinstance(key, str) or not key:
            raise StatsError(f"{where}: tracked entry {i} has no string 'key': {shown(t)}")
        keys.append(key)
    dup = sorted({k for k in keys if keys.count(k) > 1})
    if dup:
        raise StatsError(f"{where}: tracked keys must be unique; duplicated: {shown(dup, 200)}")
    return [dict(t) for t in tracked]


def check_metadata(metadata: dict, tracked: list[dict], where: str) -> None:
    """Check decoded metadata and the ``tracked`` entries against the schema above.

    Raises:
        StatsError: the first field of the wrong type or range, named by its path (``metadata config: config field
            n_embd='abc' ...``, ``tracked[3].layer``), with the value and what it should be.
    """
    check = JsonChecker(f"{where}: metadata", StatsError)
    check.fields(metadata, METADATA)
    try:
        check_config_sizes(metadata.get("config") or {})
    except ConfigError as exc:
        raise StatsError(f"{where}: metadata 'config': {exc}") from None
    for i, entry in enumerate(tracked):
        check.fields(entry, TRACKED, prefix=f"tracked[{i}].")
        key_layer = parse_layer_key(entry["key"])[0]
        if entry["key"].startswith("layers.") and key_layer is None:
            check.fail(f"tracked[{i}].key", entry["key"], "'layers.<index>.<role>' with an integer index")
        if key_layer is not None and entry.get("layer") is not None and entry["layer"] != key_layer:
            check.fail(f"tracked[{i}].layer", entry["layer"], f"{key_layer}, the layer its key names")
