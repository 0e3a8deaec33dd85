"""The per-``model_type`` table: which module names of a family hold which role, and what its config entries are
called. Like peft's target-module table, and like transformers' auto mappings it resolves lazily.

The built-in entries (GPT-2, Llama, Mistral, Qwen2, BERT, GPT-NeoX) are plain data below. Any other model type is
looked up, on first use, in the entry-point group ``hf_varinit.architectures`` (`hf_varinit.plugins`): an entry
``model_type = "module:attribute"`` names an `Architecture`, imported only when that model type is asked for.
`register_architecture` adds one from Python. A family that transformers does not build (the lab's MLP) says in
its entry which `build_config` options apply to it, how to build its config, and which of its config entries are
sizes.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from hf_varinit.errors import ConfigError
from hf_varinit.plugins import ARCHITECTURES as ENTRY_POINT_GROUP
from hf_varinit.plugins import entry_names, load_entry

__all__ = ["ARCHITECTURES", "ENCODER_TYPES", "ENTRY_POINT_GROUP", "FUSED_LAYOUTS", "Architecture", "ConfigNames",
           "Fused", "buildable_types", "get_architecture", "is_known_architecture", "register_architecture"]

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
    """One family of models: module-name suffix -> role, and how its configs are named, built and checked.

    Attributes:
        modules (`dict[str, str | Fused]`): module-name suffix -> role (``"attn.c_attn"`` -> Q/K/V `Fused`).
        config (`ConfigNames`, *optional*): the config attributes of a transformers family; `build_config` maps
            its options onto them and builds the config with ``AutoConfig.for_model``.
        build (`Callable[..., PretrainedConfig]`, *optional*): the config builder of a family outside transformers'
            families: called with the given ones of ``options`` and the extra config entries, returns the config.
        options (`tuple[str, ...]`): the `build_config` options ``build`` takes (with ``config``, they follow
            from it).
        size_keys (`tuple[str, ...]`): this family's own config entries that are sizes (a positive integer or a
            non-empty list of them): checked in stored configs and named when two configs disagree.
    """

    modules: dict[str, str | Fused]
    config: ConfigNames | None = None
    build: Callable[..., Any] | None = None
    options: tuple[str, ...] = ()
    size_keys: tuple[str, ...] = ()

    def __post_init__(self):
        if not isinstance(self.modules, dict) or not all(isinstance(k, str) and isinstance(v, (str, Fused))
                                                         for k, v in self.modules.items()):
            raise ConfigError(f"Architecture.modules={self.modules!r} must map module-name suffixes to roles "
                              "(str or Fused), e.g. {'classifier': 'head'}")
        if self.build is not None and not callable(self.build):
            raise ConfigError(f"Architecture.build={self.build!r} must be a callable that returns the config")

    @property
    def buildable(self) -> bool:
        """Whether `build_config` can build this family's config."""
        return self.config is not None or self.build is not None


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

# The table: the built-in families, then whatever `register_architecture` or an entry point adds.
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
}

# Encoder-only model types: `from_config` builds them with a masked-LM head.
ENCODER_TYPES = frozenset({"bert", "roberta", "distilbert", "albert", "electra", "deberta", "deberta-v2", "modernbert"})

_LOOKED_UP: set[str] = set()  # model types already looked for among the entry points (found or not)


def register_architecture(model_type: str, architecture: Architecture, *, overwrite: bool = False) -> None:
    """Add ``model_type`` to the table (as peft registers its methods).

    Args:
        model_type (`str`): the ``config.model_type`` of the family.
        architecture (`Architecture`): its entry.
        overwrite (`bool`): replace an existing entry (a built-in one included).

    Raises:
        ConfigError: ``model_type`` is not a non-empty string, ``architecture`` is not an `Architecture`, or the
            type is in the table already and ``overwrite`` is False.

    Example:
        >>> register_architecture("my_mlp", Architecture(modules={"classifier": "head"}))  # doctest: +SKIP
    """
    if not isinstance(model_type, str) or not model_type:
        raise ConfigError(f"model_type={model_type!r} must be a non-empty string, e.g. 'varinit_mlp'")
    if not isinstance(architecture, Architecture):
        raise ConfigError(f"the entry of {model_type!r} is a {type(architecture).__name__}; give an "
                          "hf_varinit.arch.table.Architecture")
    if model_type in ARCHITECTURES and not overwrite:
        raise ConfigError(f"model_type {model_type!r} is in the architecture table already; pass overwrite=True to "
                          "replace its entry")
    ARCHITECTURES[model_type] = architecture
    _LOOKED_UP.add(model_type)


def get_architecture(model_type: str | None) -> Architecture | None:
    """The table entry of ``model_type``, or None for a model type neither the table nor an entry point knows.

    A model type outside the table is looked up once in the entry-point group ``hf_varinit.architectures``; the
    entry found is added to the table.

    Raises:
        ConfigError: an installed entry point cannot be loaded, or does not name an `Architecture`.
    """
    if not isinstance(model_type, str):
        return None
    if model_type not in ARCHITECTURES and model_type not in _LOOKED_UP:
        _LOOKED_UP.add(model_type)
        entry = load_entry(ENTRY_POINT_GROUP, model_type)
        if entry is not None:
            if not isinstance(entry, Architecture):
                _LOOKED_UP.discard(model_type)
                raise ConfigError(f"entry point {ENTRY_POINT_GROUP} {model_type!r} names a "
                                  f"{type(entry).__name__}, not an hf_varinit.arch.table.Architecture; fix the "
                                  "distribution that declares it")
            ARCHITECTURES[model_type] = entry
    return ARCHITECTURES.get(model_type)


def is_known_architecture(model_type: str | None) -> bool:
    """Whether the table (or an entry point) has ``model_type``."""
    return get_architecture(model_type) is not None


def buildable_types() -> list[str]:
    """The model types `build_config` can build: those of the table, then the entry points not yet loaded."""
    built = [t for t, a in ARCHITECTURES.items() if a.buildable]
    return built + [t for t in entry_names(ENTRY_POINT_GROUP) if t not in ARCHITECTURES]
