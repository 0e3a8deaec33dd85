"""Reading a config: its depth, width and head counts, the sizes it sets, and what two configs disagree on.

The accessors (`num_layers`, `hidden_size`, `num_heads`, `num_kv_heads`) read a config object or its ``to_dict()``
without naming attributes anywhere else, trying each family's name in turn, so model types outside the table are
read too; they refuse a value that is not a positive integer, naming the field. `check_config_sizes` checks every
size entry of a stored config at once (a family's own ones from its `Architecture.size_keys`).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from transformers import PretrainedConfig

from hf_varinit.arch.table import get_architecture
from hf_varinit.errors import ConfigError, shown

__all__ = ["MAX_SIZE", "SHAPE_KEYS", "SIZE_KEYS", "Config", "check_config_sizes", "config_differences",
           "hidden_size", "num_heads", "num_kv_heads", "num_layers", "positive_int", "shape_signature"]

# Names tried in order, so model types outside the table are read too (``d_model``, ``num_layers``, ...).
_LAYER_NAMES = ("num_hidden_layers", "n_layer", "num_layers")
_WIDTH_NAMES = ("hidden_size", "n_embd", "d_model")
_HEAD_NAMES = ("num_attention_heads", "n_head")
_KV_HEAD_NAMES = ("num_key_value_heads",)
# Config entries that can change the shapes of tracked tensors (besides the hidden size and depth); error messages
# name the ones two configs disagree on. The head count is not one: GPT-2's tensors have the same shapes at any.
SHAPE_KEYS = ("vocab_size", "n_positions", "max_position_embeddings", "type_vocab_size", "intermediate_size",
              "n_inner", "num_key_value_heads", "head_dim", "num_labels")
# Config entries that are sizes (positive integers) wherever a config sets them: checked in stored configs.
SIZE_KEYS = (*_LAYER_NAMES, *_WIDTH_NAMES, *_HEAD_NAMES, *_KV_HEAD_NAMES, "vocab_size", "n_positions",
             "max_position_embeddings", "intermediate_size", "n_inner", "head_dim")
MAX_SIZE = 2**31 - 1  # no model dimension is larger; torch cannot even allocate meta tensors of 2**63

Config = PretrainedConfig | Mapping[str, Any]


def _text_config(config: Config) -> Config:
    """The text part of a composite config (the config itself otherwise); a dict is read as it is."""
    return config.get_text_config() if hasattr(config, "get_text_config") else config


def _values(config: Config) -> Mapping[str, Any]:
    return config.to_dict() if hasattr(config, "to_dict") else config


def _own_size_keys(values: Mapping[str, Any]) -> tuple[str, ...]:
    """The size entries of the config's own family (`Architecture.size_keys`; none for an unknown type)."""
    arch = get_architecture(values.get("model_type"))
    return arch.size_keys if arch is not None else ()


def positive_int(name: str, value: Any) -> int:
    """``value`` of the config field ``name`` if it is an integer in [1, MAX_SIZE]; else a ConfigError naming it."""
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= MAX_SIZE:
        raise ConfigError(f"config field {name}={shown(value)} is invalid: it must be a positive integer (at most "
                          f"2**31 - 1); fix the config, e.g. {name}=12")
    return value


def _first_int(config: Config, names: tuple[str, ...]) -> int | None:
    for name in names:
        value = config.get(name) if isinstance(config, Mapping) else getattr(config, name, None)
        if value is not None:  # named as the config stores it (GPT-2's num_hidden_layers is n_layer)
            return positive_int(getattr(config, "attribute_map", {}).get(name, name), value)
    return None


def check_config_sizes(config: Config) -> None:
    """A ConfigError naming the first size entry (`SIZE_KEYS`, then the family's own `Architecture.size_keys`) that
    is not a positive integer (or, for a list entry, a non-empty list of them)."""
    values = _values(config)
    for name in SIZE_KEYS:
        if values.get(name) is not None:
            positive_int(name, values[name])
    for name in _own_size_keys(values):
        value = values.get(name)
        if isinstance(value, (list, tuple)) and value:
            for i, size in enumerate(value):
                positive_int(f"{name}[{i}]", size)
        elif isinstance(value, (list, tuple)):
            raise ConfigError(f"config field {name}={shown(value)} is invalid: it must be a positive integer or a "
                              f"non-empty list of them, e.g. {name}=[128, 128]")
        elif value is not None:
            positive_int(name, value)


def num_layers(config: Config) -> int | None:
    """The number of blocks of a config or config dict (``n_layer``, ``num_hidden_layers``, ``num_layers``)."""
    return _first_int(_text_config(config), _LAYER_NAMES)


def hidden_size(config: Config) -> int | None:
    """The hidden size of a config or config dict (``n_embd``, ``hidden_size``, ``d_model``)."""
    return _first_int(_text_config(config), _WIDTH_NAMES)


def num_heads(config: Config) -> int | None:
    """The number of attention (query) heads of a config or config dict."""
    return _first_int(_text_config(config), _HEAD_NAMES)


def num_kv_heads(config: Config) -> int | None:
    """The number of key/value heads (grouped-query attention); the head count for models without GQA."""
    return _first_int(_text_config(config), _KV_HEAD_NAMES) or num_heads(config)


def shape_signature(config: Config) -> dict[str, Any]:
    """The entries of `SHAPE_KEYS` (and the family's own size entries) that a config or config dict sets: the
    config side of a shape mismatch."""
    values = dict(_values(config))
    return {key: values[key] for key in (*SHAPE_KEYS, *_own_size_keys(values)) if values.get(key) is not None}


def config_differences(theirs: Config, mine: Config) -> list[tuple[str, Any, Any]]:
    """``(key, theirs, mine)`` for every `shape_signature` entry both configs set to different values."""
    a, b = shape_signature(theirs), shape_signature(mine)
    return [(key, a[key], b[key]) for key in a if key in b and a[key] != b[key]]
