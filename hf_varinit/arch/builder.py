"""Building a config: `build_config`, the one builder from this project's option names (``n_layer``, ``n_embd``,
``n_head``, ...), and `config_from_dict` for a config stored as a dict.

A transformers family is built with ``AutoConfig.for_model`` after its `ConfigNames` map the options onto its
attributes; a family with a builder of its own in its `Architecture` entry (the lab's MLP) is built by it. A config
built here at a vocabulary smaller than the family's default (or the stored one's) gets no special-token ids that lie
outside it.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from huggingface_hub.errors import StrictDataclassError
from transformers import AutoConfig, PretrainedConfig

from hf_varinit.arch.config import check_config_sizes, positive_int
from hf_varinit.arch.table import buildable_types, get_architecture
from hf_varinit.errors import ConfigError, shown

__all__ = ["BUILDER_OPTIONS", "TOKEN_ID_KEYS", "build_config", "config_from_dict", "config_options",
           "default_mlp_width"]

BUILDER_OPTIONS = ("n_layer", "n_embd", "n_head", "vocab_size", "n_positions", "intermediate_size", "dropout")
TOKEN_ID_KEYS = ("bos_token_id", "eos_token_id", "pad_token_id")  # special-token ids a default config may set
# Entries of a saved config that describe the file, not the model.
_NOT_CONFIG = ("model_type", "transformers_version")


def config_options(model_type: str) -> tuple[str, ...]:
    """The `build_config` options that apply to ``model_type`` (a family with its own builder lists them).

    Raises:
        ConfigError: ``model_type`` has no builder; the message lists those that do.
    """
    arch = get_architecture(model_type)
    if arch is not None and arch.build is not None:
        return tuple(arch.options)
    if arch is None or arch.config is None:
        raise ConfigError(f"no config builder for model_type {model_type!r}; valid: {', '.join(buildable_types())}")
    return BUILDER_OPTIONS + (("n_kv_heads",) if arch.config.kv_heads else ())


def default_mlp_width(model_type: str, width: int) -> int | None:
    """The MLP width `hf-varinit plan` gives a model of hidden size ``width``, a multiple of 8 (SwiGLU: 8/3 of
    the width, else 4x); None where the config's own default already follows the width (GPT-2), or for a family
    without `ConfigNames`."""
    arch = get_architecture(model_type)
    names = arch.config if arch is not None else None
    if names is None or names.mlp_ratio is None:
        return None
    return int(names.mlp_ratio * width + 7) // 8 * 8


def _token_ids_outside(values: Mapping[str, Any], vocab_size: int, given: Mapping[str, Any]) -> dict[str, None]:
    """None for each special-token id of ``values`` (a family's default config, or a stored one) that ``vocab_size``
    does not contain (GPT-2's 50256 at a vocabulary of 4096), unless the caller set it in ``given``: a config built
    here at another vocabulary has no tokenizer to take them from."""
    out = {}
    for key in TOKEN_ID_KEYS:
        value = values.get(key)
        ids = value if isinstance(value, (list, tuple)) else [value]
        if key not in given and any(isinstance(i, int) and not 0 <= i < vocab_size for i in ids):
            out[key] = None
    return out


def build_config(
    model_type: str, *, n_layer: int | None = None, n_embd: int | None = None, n_head: int | None = None,
    n_kv_heads: int | None = None, intermediate_size: int | None = None, vocab_size: int | None = None,
    n_positions: int | None = None, dropout: float | None = None, **extra: Any,
) -> PretrainedConfig:
    """A config of ``model_type`` from this project's option names; an option left None keeps the config's default.

    Args:
        model_type (`str`): a buildable type of the table (``gpt2``, ``llama``, ``mistral``, ``qwen2``, ``bert``,
            ``gpt_neox``), or one an entry point or `register_architecture` adds with a builder of its own.
        n_layer / n_embd / n_head (`int`, *optional*): depth, hidden size and attention heads.
        n_kv_heads (`int`, *optional*): key/value heads (grouped-query attention: Llama, Mistral, Qwen2).
        intermediate_size (`int`, *optional*): MLP width.
        vocab_size / n_positions (`int`, *optional*): vocabulary and maximum sequence length. A ``vocab_size``
            that does not contain the family's default special-token ids sets those ids to None (unless given).
        dropout (`float`, *optional*): residual, embedding and attention dropout, all at once.
        extra: passed to the config as is (``bos_token_id``, ``num_labels``, ``input_size``...).

    Raises:
        ConfigError: no builder for the type, an option that does not apply to it, or a value it refuses.

    Example:
        >>> build_config("llama", n_layer=2, n_embd=64, n_head=4, n_kv_heads=2).num_key_value_heads
        2
    """
    given = {"n_layer": n_layer, "n_embd": n_embd, "n_head": n_head, "n_kv_heads": n_kv_heads,
             "intermediate_size": intermediate_size, "vocab_size": vocab_size, "n_positions": n_positions,
             "dropout": dropout}
    valid = config_options(model_type)
    unknown = sorted(k for k, v in given.items() if v is not None and k not in valid)
    if unknown:
        raise ConfigError(f"{', '.join(unknown)} do(es) not apply to model_type {model_type!r}; "
                          f"its options: {', '.join(valid)}")
    for name, value in given.items():
        if value is not None and name != "dropout":
            positive_int(name, value)
    arch = get_architecture(model_type)
    try:
        if arch.build is not None:
            return arch.build(**{k: v for k, v in given.items() if v is not None}, **extra)
        names = arch.config
        kwargs = {names.layers: n_layer, names.width: n_embd, names.heads: n_head, names.mlp_width: intermediate_size,
                  "vocab_size": vocab_size, names.positions: n_positions}
        if names.kv_heads:
            kwargs[names.kv_heads] = n_kv_heads
        kwargs.update(dict.fromkeys(names.dropout, dropout))
        kwargs = {k: v for k, v in kwargs.items() if v is not None}
        if vocab_size is not None:
            kwargs.update(_token_ids_outside(AutoConfig.for_model(model_type).to_dict(), vocab_size, extra))
        return AutoConfig.for_model(model_type, **kwargs, **extra)
    except (ValueError, TypeError, ArithmeticError, StrictDataclassError) as exc:  # e.g. heads that do not divide
        chosen = {k: v for k, v in {**given, **extra}.items() if v is not None}
        raise ConfigError(f"cannot build a {model_type} config from {shown(chosen, 300)}: "
                          f"{shown(' '.join(str(exc).split()), 400)[1:-1]}") from None


def config_from_dict(model_type: str, values: Mapping[str, Any], **overrides: Any) -> PretrainedConfig:
    """The config of ``model_type`` (any type transformers knows) stored as ``values`` (a ``to_dict()``, as reports
    keep it), with ``overrides`` (config entries under the config's own names) applied. A ``vocab_size`` override
    that does not contain the stored special-token ids sets those ids to None (unless overridden too).

    Raises:
        ConfigError: an unknown model type, an override the config does not have, a size override that is not a
            positive integer, or values the config refuses.

    Example:
        >>> config_from_dict("gpt2", {"n_layer": 2, "n_embd": 64}, n_layer=4).n_layer
        4
    """
    try:
        cls = type(AutoConfig.for_model(model_type))
    except (ValueError, KeyError) as exc:
        raise ConfigError(f"model_type {model_type!r} is not a config type transformers knows: {exc}") from None
    known = set(values) | set(cls().to_dict())
    unknown = sorted(k for k in overrides if k not in known)
    if unknown:
        names = sorted(k for k in known if not k.startswith("_") and k not in _NOT_CONFIG)
        raise ConfigError(f"{model_type} config has no entry {', '.join(map(repr, unknown))}; "
                          f"override one of: {', '.join(names)}")
    check_config_sizes({"model_type": model_type, **overrides})  # a depth of -5 would fail deep inside torch
    merged = {k: v for k, v in {**values, **overrides}.items() if k not in _NOT_CONFIG}
    if isinstance(overrides.get("vocab_size"), int):
        merged.update(_token_ids_outside(merged, overrides["vocab_size"], overrides))
    try:
        return _built(cls, merged)
    except _REFUSALS as exc:
        culprit = _culprit(cls, merged, overrides)
        what = f"entry {culprit}={shown(merged[culprit], 80)}" if culprit else f"{shown(overrides or merged, 300)}"
        raise ConfigError(f"cannot build a {model_type} config from {what}: "
                          f"{shown(' '.join(str(exc).split()) or type(exc).__name__, 300)[1:-1]}") from None


# What a config class raises on values it cannot take: a stored config (a report's, from the hub) is untrusted, so
# each is caught at this boundary and named (StrictDataclassError: a field of the wrong type; IndexError and the
# rest: values transformers' own code does not expect, such as dtype=[]).
_REFUSALS = (ValueError, TypeError, StrictDataclassError, IndexError, KeyError, AttributeError, ArithmeticError,
             RecursionError, AssertionError)


def _built(cls: type[PretrainedConfig], values: Mapping[str, Any]) -> PretrainedConfig:
    """``cls.from_dict(values)``, serialised once so that a value it cannot write back fails here, not later."""
    config = cls.from_dict(dict(values))
    config.to_dict()
    return config


def _culprit(cls: type[PretrainedConfig], merged: Mapping[str, Any], overrides: Mapping[str, Any]) -> str | None:
    """The first entry (overrides first) without which the config builds: the one to name in the error."""
    for key in [*overrides, *(k for k in merged if k not in overrides)][:64]:
        try:
            _built(cls, {k: v for k, v in merged.items() if k != key})
        except _REFUSALS:
            continue
        return key
    return None
