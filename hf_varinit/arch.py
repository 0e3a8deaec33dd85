"""The one place that knows architecture names: a small table per ``model_type``, like peft's target-module table.

Each `Architecture` gives the module-name suffixes of a family and their roles (fused Q/K/V projections as
`Fused`), and the names of its config attributes (`ConfigNames`). On top of the table:

* config accessors (`num_layers`, `hidden_size`, `num_heads`, `num_kv_heads`) that read a config object or
  its ``to_dict()`` without naming attributes elsewhere, and refuse a value that is not a positive integer,
  naming the field (`check_config_sizes` checks every size entry of a stored config at once);
* `shape_differences` of two models' tracked tensor shapes (what a variance report must match);
* `build_config`, the one builder of a config from this project's option names (``n_layer``, ``n_embd``,
  ``n_head``, ...), and `config_from_dict` for a stored config;
* `layer_key` / `parse_layer_key`, the one place that writes and reads the ``layers.{i}.{role}`` keys of
  statistics, reports and init plans.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from huggingface_hub.errors import StrictDataclassError
from transformers import AutoConfig, PretrainedConfig

from hf_varinit.errors import ConfigError, shown
from hf_varinit.models.mlp import VarInitMLPConfig

FUSED_LAYOUTS = ("blocks", "interleaved")


@dataclass(frozen=True)
class Fused:
    """A fused projection holding several roles (Q, K, V) along its output axis.

    ``layout="blocks"``: contiguous blocks (GPT-2 ``c_attn``); ``"interleaved"``: per head (GPT-NeoX).
    """

    roles: tuple[str, ...]
    layout: str

    def __post_init__(self):
        if self.layout not in FUSED_LAYOUTS:
            raise ConfigError(f"fused layout {self.layout!r} is unknown; valid: {', '.join(FUSED_LAYOUTS)}")


@dataclass(frozen=True)
class ConfigNames:
    """The config attributes of a transformer family, and what `build_config` derives from them."""

    layers: str = "num_hidden_layers"  # depth
    width: str = "hidden_size"
    heads: str = "num_attention_heads"
    positions: str = "max_position_embeddings"  # maximum positions
    mlp_width: str = "intermediate_size"
    kv_heads: str | None = None  # key/value heads of grouped-query attention (None: no GQA)
    dropout: tuple[str, ...] = ()  # every attribute the one ``dropout`` option sets
    mlp_ratio: float | None = 4.0  # `default_mlp_width` / hidden size (None: keep the config's own default)


@dataclass(frozen=True)
class Architecture:
    """Module-name suffix -> role for one family of models, and its config names (None: no builder)."""

    modules: dict[str, str | Fused]
    config: ConfigNames | None = None


_QKV_BLOCKS = Fused(("q", "k", "v"), "blocks")
_QKV_INTERLEAVED = Fused(("q", "k", "v"), "interleaved")
_HEADS = {"lm_head": "head", "score": "head", "classifier": "head", "qa_outputs": "head"}
_LLAMA = Architecture(
    modules={
        "embed_tokens": "embedding",
        "self_attn.q_proj": "q",
        "self_attn.k_proj": "k",
        "self_attn.v_proj": "v",
        "self_attn.o_proj": "attn_out",
        "mlp.gate_proj": "mlp_gate",
        "mlp.up_proj": "mlp_in",
        "mlp.down_proj": "mlp_out",
        **_HEADS,
    },
    config=ConfigNames(kv_heads="num_key_value_heads", dropout=("attention_dropout",), mlp_ratio=8 / 3),
)

ARCHITECTURES: dict[str, Architecture] = {
    "gpt2": Architecture(
        modules={
            "wte": "embedding",
            "wpe": "position",
            "attn.c_attn": _QKV_BLOCKS,
            "attn.c_proj": "attn_out",
            "mlp.c_fc": "mlp_in",
            "mlp.c_proj": "mlp_out",
            **_HEADS,
        },
        config=ConfigNames(layers="n_layer", width="n_embd", heads="n_head", positions="n_positions",
                           mlp_width="n_inner", dropout=("resid_pdrop", "embd_pdrop", "attn_pdrop"), mlp_ratio=None),
    ),
    "llama": _LLAMA,
    "mistral": _LLAMA,
    "qwen2": _LLAMA,
    "bert": Architecture(
        modules={
            "embeddings.word_embeddings": "embedding",
            "embeddings.position_embeddings": "position",
            "embeddings.token_type_embeddings": "token_type",
            "attention.self.query": "q",
            "attention.self.key": "k",
            "attention.self.value": "v",
            "attention.output.dense": "attn_out",
            "intermediate.dense": "mlp_in",
            "output.dense": "mlp_out",
            "predictions.decoder": "head",
            **_HEADS,
        },
        config=ConfigNames(dropout=("hidden_dropout_prob", "attention_probs_dropout_prob")),
    ),
    "gpt_neox": Architecture(
        modules={
            "embed_in": "embedding",
            "attention.query_key_value": _QKV_INTERLEAVED,
            "attention.dense": "attn_out",
            "mlp.dense_h_to_4h": "mlp_in",
            "mlp.dense_4h_to_h": "mlp_out",
            "embed_out": "head",
            **_HEADS,
        },
        config=ConfigNames(dropout=("attention_dropout", "hidden_dropout")),
    ),
    "varinit_mlp": Architecture(modules={"classifier": "head"}),
}

# Encoder-only model types: `from_config` builds them with a masked-LM head.
ENCODER_TYPES = frozenset({"bert", "roberta", "distilbert", "albert", "electra", "deberta", "deberta-v2", "modernbert"})


def get_architecture(model_type: str | None) -> Architecture | None:
    """The table entry of ``model_type``, or None for a model type the table does not know."""
    return ARCHITECTURES.get(model_type)  # type: ignore[arg-type]


def is_known_architecture(model_type: str | None) -> bool:
    return model_type in ARCHITECTURES


# --- config accessors -------------------------------------------------------------------------------------------
# Names tried in order, so model types outside the table are read too (``d_model``, ``num_layers``, ...).
_LAYER_NAMES = ("num_hidden_layers", "n_layer", "num_layers")
_WIDTH_NAMES = ("hidden_size", "n_embd", "d_model")
_HEAD_NAMES = ("num_attention_heads", "n_head")
_KV_HEAD_NAMES = ("num_key_value_heads",)
# Config entries that can change the shapes of tracked tensors (besides the hidden size and depth); error messages
# name the ones two configs disagree on. The head count is not one: GPT-2's tensors have the same shapes at any.
SHAPE_KEYS = ("vocab_size", "n_positions", "max_position_embeddings", "type_vocab_size", "intermediate_size",
              "n_inner", "num_key_value_heads", "head_dim", "input_size", "hidden_sizes", "num_labels")

Config = PretrainedConfig | Mapping[str, Any]


def _text_config(config: Config) -> Config:
    """The text part of a composite config (the config itself otherwise); a dict is read as it is."""
    return config.get_text_config() if hasattr(config, "get_text_config") else config


MAX_SIZE = 2**31 - 1  # no model dimension is larger; torch cannot even allocate meta tensors of 2**63


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


# Config entries that are sizes (positive integers) wherever a config sets them: checked in stored configs.
SIZE_KEYS = (*_LAYER_NAMES, *_WIDTH_NAMES, *_HEAD_NAMES, *_KV_HEAD_NAMES, "vocab_size", "n_positions",
             "max_position_embeddings", "intermediate_size", "n_inner", "head_dim", "input_size")


def check_config_sizes(config: Config) -> None:
    """A ConfigError naming the first size entry (`SIZE_KEYS`, ``hidden_sizes``) that is not a positive integer."""
    values = config.to_dict() if hasattr(config, "to_dict") else config
    for name in SIZE_KEYS:
        if values.get(name) is not None:
            positive_int(name, values[name])
    sizes = values.get("hidden_sizes", [1])  # the MLP's widths
    if not isinstance(sizes, (list, tuple)) or not sizes:
        raise ConfigError(f"config field hidden_sizes={shown(sizes)} is invalid: it must be a non-empty list of "
                          "positive integers, e.g. hidden_sizes=[128, 128]")
    for i, size in enumerate(sizes):
        positive_int(f"hidden_sizes[{i}]", size)


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
    """The entries of `SHAPE_KEYS` that a config (or config dict) sets: the config side of a shape mismatch."""
    values = config.to_dict() if hasattr(config, "to_dict") else dict(config)
    return {key: values[key] for key in SHAPE_KEYS if values.get(key) is not None}


def config_differences(theirs: Config, mine: Config) -> list[tuple[str, Any, Any]]:
    """``(key, theirs, mine)`` for every `SHAPE_KEYS` entry both configs set to different values."""
    a, b = shape_signature(theirs), shape_signature(mine)
    return [(key, a[key], b[key]) for key in a if key in b and a[key] != b[key]]


Shapes = Mapping[str, tuple[int, ...]]


def shape_differences(theirs: Shapes, mine: Shapes) -> list[tuple[str, tuple[int, ...], tuple[int, ...]]]:
    """``(key, their shape, my shape)`` for every tracked tensor whose shape differs, in ``theirs``' order.

    ``theirs`` / ``mine`` map tracked keys (``layers.0.q``, ``embedding``) to shapes. Keys one side lacks are not
    compared. At different depths a block tensor is compared with the same role's tensors at any depth of the other
    model, so depth alone is never a shape difference.

    Example:
        >>> shape_differences({"embedding": (1000, 64)}, {"embedding": (500, 64), "layers.0.q": (64, 64)})
        [('embedding', (1000, 64), (500, 64))]
    """
    same_depth = ({parse_layer_key(k)[0] for k in theirs} - {None}) == ({parse_layer_key(k)[0] for k in mine} - {None})
    roles: dict[str, list[tuple[int, ...]]] = {}  # role -> my shapes at any depth
    for key, shape in mine.items():
        roles.setdefault(parse_layer_key(key)[1], []).append(tuple(shape))
    out = []
    for key, shape in theirs.items():
        (layer, role), shape = parse_layer_key(key), tuple(shape)
        if key in mine and (same_depth or layer is None) and shape != tuple(mine[key]):
            out.append((key, shape, tuple(mine[key])))
        elif layer is not None and not same_depth and role in roles and shape not in roles[role]:
            out.append((key, shape, tuple(mine.get(key, roles[role][0]))))
    return out


# --- config builder ---------------------------------------------------------------------------------------------
_BUILDER_OPTIONS = ("n_layer", "n_embd", "n_head", "vocab_size", "n_positions", "intermediate_size", "dropout")
_MLP_OPTIONS = ("n_layer", "n_embd", "input_size", "num_labels")


def config_options(model_type: str) -> tuple[str, ...]:
    """The `build_config` options that apply to ``model_type`` (MLP: depth, width, inputs and classes).

    Raises:
        ConfigError: ``model_type`` has no builder; the message lists those that do.
    """
    if model_type == VarInitMLPConfig.model_type:
        return _MLP_OPTIONS
    arch = get_architecture(model_type)
    if arch is None or arch.config is None:
        buildable = [t for t, a in ARCHITECTURES.items() if a.config is not None] + [VarInitMLPConfig.model_type]
        raise ConfigError(f"no config builder for model_type {model_type!r}; valid: {', '.join(buildable)}")
    return _BUILDER_OPTIONS + (("n_kv_heads",) if arch.config.kv_heads else ())


def default_mlp_width(model_type: str, width: int) -> int | None:
    """The MLP width `hf-varinit plan` gives a model of hidden size ``width``, a multiple of 8 (SwiGLU: 8/3 of
    the width, else 4x); None where the config's own default already follows the width (GPT-2)."""
    names = ARCHITECTURES[model_type].config
    if names is None or names.mlp_ratio is None:
        return None
    return int(names.mlp_ratio * width + 7) // 8 * 8


def build_config(
    model_type: str, *, n_layer: int | None = None, n_embd: int | None = None, n_head: int | None = None,
    n_kv_heads: int | None = None, intermediate_size: int | None = None, vocab_size: int | None = None,
    n_positions: int | None = None, dropout: float | None = None, **extra: Any,
) -> PretrainedConfig:
    """A config of ``model_type`` from this project's option names; an option left None keeps the config's default.

    Args:
        model_type (`str`): a buildable type of `ARCHITECTURES` (``gpt2``, ``llama``, ``mistral``, ``qwen2``,
            ``bert``, ``gpt_neox``) or ``varinit_mlp`` (``n_layer`` hidden layers of width ``n_embd``).
        n_layer / n_embd / n_head (`int`, *optional*): depth, hidden size and attention heads.
        n_kv_heads (`int`, *optional*): key/value heads (grouped-query attention: Llama, Mistral, Qwen2).
        intermediate_size (`int`, *optional*): MLP width.
        vocab_size / n_positions (`int`, *optional*): vocabulary and maximum sequence length.
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
    try:
        if model_type == VarInitMLPConfig.model_type:
            default = VarInitMLPConfig().hidden_sizes
            width = n_embd if n_embd is not None else default[0]
            return VarInitMLPConfig(hidden_sizes=[width] * (n_layer if n_layer is not None else len(default)), **extra)
        names = ARCHITECTURES[model_type].config
        kwargs = {names.layers: n_layer, names.width: n_embd, names.heads: n_head, names.mlp_width: intermediate_size,
                  "vocab_size": vocab_size, names.positions: n_positions}
        if names.kv_heads:
            kwargs[names.kv_heads] = n_kv_heads
        kwargs.update(dict.fromkeys(names.dropout, dropout))
        return AutoConfig.for_model(model_type, **{k: v for k, v in kwargs.items() if v is not None}, **extra)
    except (ValueError, TypeError, ArithmeticError, StrictDataclassError) as exc:  # e.g. heads that do not divide
        chosen = {k: v for k, v in {**given, **extra}.items() if v is not None}
        raise ConfigError(f"cannot build a {model_type} config from {shown(chosen, 300)}: "
                          f"{shown(' '.join(str(exc).split()), 400)[1:-1]}") from None


# Entries of a saved config that describe the file, not the model.
_NOT_CONFIG = ("model_type", "transformers_version")


def config_from_dict(model_type: str, values: Mapping[str, Any], **overrides: Any) -> PretrainedConfig:
    """The config of ``model_type`` (any type transformers knows) stored as ``values`` (a ``to_dict()``, as reports
    keep it), with ``overrides`` (config entries under the config's own names) applied.

    Raises:
        ConfigError: an unknown model type, an override the config does not have, or values it refuses.

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
    merged = {k: v for k, v in {**values, **overrides}.items() if k not in _NOT_CONFIG}
    try:
        return cls.from_dict(merged)
    except (ValueError, TypeError, StrictDataclassError) as exc:  # the last: a field of the wrong type
        shown = overrides or merged  # the entries the caller chose, when there are any; the message on one line
        raise ConfigError(f"cannot build a {model_type} config from {shown}: {' '.join(str(exc).split())}") from None


# --- layer keys -------------------------------------------------------------------------------------------------
_LAYER_KEY = re.compile(r"^layers\.(\d+)\.(.+)$")


def layer_key(layer: int | None, role: str) -> str:
    """The key of ``role`` in block ``layer`` (``layers.3.q``); a tensor outside the blocks is keyed by its role."""
    return role if layer is None else f"layers.{layer}.{role}"


def parse_layer_key(key: str) -> tuple[int | None, str]:
    """``(layer, role)`` of a key written by `layer_key`; ``(None, key)`` for keys outside the blocks.

    Example:
        >>> parse_layer_key("layers.3.q"), parse_layer_key("embedding")
        ((3, 'q'), (None, 'embedding'))
    """
    match = _LAYER_KEY.match(key)
    return (int(match.group(1)), match.group(2)) if match else (None, key)


__all__ = [
    "ARCHITECTURES", "ENCODER_TYPES", "SIZE_KEYS", "Architecture", "ConfigNames", "Fused", "build_config",
    "check_config_sizes", "config_differences", "config_from_dict", "config_options", "default_mlp_width",
    "get_architecture", "hidden_size", "is_known_architecture", "layer_key", "num_heads", "num_kv_heads", "num_layers",
    "parse_layer_key", "positive_int", "shape_differences", "shape_signature",
]
