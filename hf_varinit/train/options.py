"""Options of the pretraining loop: three dataclass groups, the argparse CLI generated from them, YAML files.

One source of truth: every option is a dataclass field with ``metadata={"help": ...}``. `add_pretrain_arguments`
turns the fields into ``--kebab-case`` flags; `load_yaml_options` reads a YAML file with the sections
``model:``, ``data:`` and ``training:`` (or the same keys flat); flags given on the command line override
the file.

Example:
    >>> options = parse_options(["--config", "configs/gpt2-tiny-test.yaml", "--max-steps", "4"])  # doctest: +SKIP
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from hf_varinit.errors import ConfigError

BUNDLED_CONFIGS = Path(__file__).resolve().parents[1] / "configs"
MODEL_TYPES = ("gpt2", "llama")
OPTIMIZERS = ("adamw", "sgd")
MIXED_PRECISION = ("no", "bf16", "fp16")
REPORT_TO = ("none", "tensorboard", "trackio", "wandb")
ON_NONFINITE = ("error", "skip")


def _check_positive(group: str, **values: Any) -> None:
    for name, value in values.items():
        if value is not None and (not isinstance(value, int) or isinstance(value, bool) or value < 1):
            raise ConfigError(f"{group}.{name}={value!r} must be an integer >= 1")


def _check_choice(name: str, value: Any, choices: tuple[str, ...]) -> None:
    if value not in choices:
        raise ConfigError(f"{name}={value!r} is not one of {list(choices)}")


@dataclass
class ModelOptions:
    """The architecture: a GPT-2 or Llama decoder built with `transformers` configs."""

    model_type: str = field(default="gpt2", metadata={"help": "architecture: gpt2 | llama"})
    n_layer: int = field(default=12, metadata={"help": "number of transformer blocks"})
    n_embd: int = field(default=128, metadata={"help": "width (n_embd for gpt2, hidden_size for llama)"})
    n_head: int = field(default=4, metadata={"help": "attention heads"})
    n_kv_heads: int | None = field(default=None, metadata={"help": "llama key/value heads (None = n_head)"})
    intermediate_size: int | None = field(
        default=None, metadata={"help": "MLP width (None = 4*n_embd for gpt2, transformers' default for llama)"}
    )
    block_size: int = field(default=128, metadata={"help": "tokens per training sequence"})
    n_positions: int | None = field(
        default=None, metadata={"help": "maximum positions of the model (None = block_size); must be >= block_size"}
    )
    vocab_size: int = field(
        default=4096, metadata={"help": "vocabulary of the trained tokenizer (a pretrained tokenizer sets its own)"}
    )
    dropout: float = field(default=0.0, metadata={"help": "dropout of residual, embedding and attention (0 = off)"})

    def __post_init__(self):
        _check_choice("model_type", self.model_type, MODEL_TYPES)
        _check_positive("model", n_layer=self.n_layer, n_embd=self.n_embd, n_head=self.n_head,
                        n_kv_heads=self.n_kv_heads, intermediate_size=self.intermediate_size,
                        block_size=self.block_size, n_positions=self.n_positions)
        if self.n_embd % self.n_head:
            raise ConfigError(f"n_embd={self.n_embd} must be divisible by n_head={self.n_head}")
        if self.n_kv_heads is not None:
            if self.model_type != "llama":
                raise ConfigError(f"n_kv_heads={self.n_kv_heads} is a llama option; model_type is {self.model_type!r}")
            if self.n_head % self.n_kv_heads:
                raise ConfigError(f"n_head={self.n_head} must be divisible by n_kv_heads={self.n_kv_heads}")
        if self.n_positions is not None and self.block_size > self.n_positions:
            raise ConfigError(
                f"block_size={self.block_size} is larger than n_positions={self.n_positions}, the longest sequence "
                f"the model can take; lower --block-size or raise --n-positions"
            )
        if self.vocab_size < 257:
            raise ConfigError(f"vocab_size={self.vocab_size} must be at least 257 (256 bytes + <|endoftext|>)")
        if not 0.0 <= self.dropout < 1.0:
            raise ConfigError(f"dropout={self.dropout} must be in [0, 1)")


@dataclass
class DataOptions:
    """The text corpus and tokenizer (see `hf_varinit.train.data.build_lm_datasets`)."""

    source: str | None = field(
        default=None,
        metadata={"help": "None = the Python stdlib (offline); a .txt/.jsonl file, a folder, or a hub dataset id"},
    )
    tokenizer: str | None = field(
        default=None, metadata={"help": "a pretrained tokenizer (folder or hub id); None = train a byte-level BPE"}
    )
    max_chars: int | None = field(default=None, metadata={"help": "cap on the corpus size in characters"})
    validation_fraction: float = field(default=0.05, metadata={"help": "share of documents held out for eval"})
    text_column: str = field(default="text", metadata={"help": "text column of json and hub datasets"})
    cache_dir: str | None = field(
        default=None,
        metadata={"help": "cache of trained tokenizers and dataset builds (None = $HF_VARINIT_CACHE or "
                          "~/.cache/hf_varinit)"},
    )

    def __post_init__(self):
        _check_positive("data", max_chars=self.max_chars)
        if not 0.0 < self.validation_fraction < 1.0:
            raise ConfigError(f"validation_fraction={self.validation_fraction} must be in (0, 1)")

    def resolved_cache_dir(self) -> Path:
        if self.cache_dir:
            return Path(self.cache_dir)
        return Path(os.environ.get("HF_VARINIT_CACHE") or Path.home() / ".cache" / "hf_varinit")


@dataclass
class TrainingOptions:
    """The optimisation, recording, checkpointing and logging."""

    init: str = field(default="gpt2", metadata={"help": "init rule spec, e.g. gpt2, kaiming, optimal:report=DIR"})
    seed: int = field(default=0, metadata={"help": "seed of the init, the data order and dropout"})
    optimizer: str = field(default="adamw", metadata={"help": "adamw | sgd"})
    lr: float = field(default=1e-3, metadata={"help": "peak learning rate"})
    momentum: float = field(default=0.0, metadata={"help": "SGD momentum (sgd only)"})
    weight_decay: float = field(default=0.0, metadata={"help": "decoupled weight decay (adamw) / L2 (sgd)"})
    warmup_steps: int = field(default=0, metadata={"help": "linear warmup steps before the cosine decay"})
    max_steps: int = field(default=300, metadata={"help": "optimizer steps"})
    batch_size: int = field(
        default=8, metadata={"help": "sequences per micro-batch over all processes (global; split across them)"}
    )
    grad_accum: int = field(default=1, metadata={"help": "micro-batches per optimizer step"})
    grad_clip: float | None = field(default=1.0, metadata={"help": "max gradient norm (None or 0 = no clipping)"})
    mixed_precision: str = field(default="no", metadata={"help": "no | bf16 | fp16 (fp16 needs a GPU)"})
    eval_every: int | None = field(default=50, metadata={"help": "evaluate every N steps (and at the end)"})
    eval_batches: int | None = field(default=20, metadata={"help": "eval batches per evaluation (None = all)"})
    log_every: int = field(default=10, metadata={"help": "write a metrics line every N steps"})
    record_every: int = field(default=5, metadata={"help": "record the weight statistics every N steps"})
    checkpoint_every: int | None = field(default=100, metadata={"help": "checkpoint every N steps (None = never)"})
    keep_last: int | None = field(default=2, metadata={"help": "complete checkpoints to keep (None = all)"})
    output_dir: str = field(default="runs/pretrain", metadata={"help": "folder of every output file"})
    resume: bool = field(default=False, metadata={"help": "continue from the newest complete checkpoint"})
    report_to: str = field(default="none", metadata={"help": "none | tensorboard | trackio | wandb"})
    on_nonfinite: str = field(
        default="error", metadata={"help": "error: stop at a NaN/inf loss | skip: skip that optimizer step"}
    )

    def __post_init__(self):
        _check_choice("optimizer", self.optimizer, OPTIMIZERS)
        _check_choice("mixed_precision", self.mixed_precision, MIXED_PRECISION)
        _check_choice("report_to", self.report_to, REPORT_TO)
        _check_choice("on_nonfinite", self.on_nonfinite, ON_NONFINITE)
        _check_positive("training", max_steps=self.max_steps, batch_size=self.batch_size, grad_accum=self.grad_accum,
                        eval_every=self.eval_every, eval_batches=self.eval_batches, log_every=self.log_every,
                        record_every=self.record_every, checkpoint_every=self.checkpoint_every,
                        keep_last=self.keep_last)
        if not self.lr > 0:
            raise ConfigError(f"lr={self.lr} must be > 0")
        if self.warmup_steps < 0:
            raise ConfigError(f"warmup_steps={self.warmup_steps} must be >= 0")
        if not 0.0 <= self.momentum < 1.0:
            raise ConfigError(f"momentum={self.momentum} must be in [0, 1)")
        if self.momentum and self.optimizer != "sgd":
            raise ConfigError(f"momentum={self.momentum} applies to --optimizer sgd only (optimizer is adamw)")
        if self.weight_decay < 0:
            raise ConfigError(f"weight_decay={self.weight_decay} must be >= 0")
        if self.grad_clip is not None and self.grad_clip < 0:
            raise ConfigError(f"grad_clip={self.grad_clip} must be >= 0 (0 or None = no clipping)")
        if not self.output_dir:
            raise ConfigError("output_dir must be set")


GROUPS: dict[str, type] = {"model": ModelOptions, "data": DataOptions, "training": TrainingOptions}


@dataclass
class PretrainOptions:
    """All options of a pretraining run."""

    model: ModelOptions = field(default_factory=ModelOptions)
    data: DataOptions = field(default_factory=DataOptions)
    training: TrainingOptions = field(default_factory=TrainingOptions)

    def to_dict(self) -> dict[str, dict[str, Any]]:
        return {g: dataclasses.asdict(getattr(self, g)) for g in GROUPS}

    @classmethod
    def from_flat(cls, values: dict[str, Any]) -> PretrainOptions:
        """Build from flat ``field -> value`` (unknown names raise `ConfigError`)."""
        unknown = sorted(set(values) - set(FIELD_GROUP))
        if unknown:
            raise ConfigError(f"unknown option(s) {unknown}; valid options: {sorted(FIELD_GROUP)}")
        groups: dict[str, dict[str, Any]] = {g: {} for g in GROUPS}
        for name, value in values.items():
            groups[FIELD_GROUP[name]][name] = _coerce(name, value)
        return cls(**{g: GROUPS[g](**kw) for g, kw in groups.items()})


FIELD_GROUP: dict[str, str] = {f.name: g for g, cls in GROUPS.items() for f in dataclasses.fields(cls)}
_HINTS: dict[str, Any] = {n: t for cls in GROUPS.values() for n, t in typing.get_type_hints(cls).items()}
_FIELDS: dict[str, dataclasses.Field] = {f.name: f for cls in GROUPS.values() for f in dataclasses.fields(cls)}


def _base_type(hint: Any) -> tuple[type, bool]:
    """(the scalar type, whether None is allowed) of a field annotation like ``int | None``."""
    args = typing.get_args(hint)
    if args:
        scalars = [a for a in args if a is not type(None)]
        return scalars[0], len(scalars) < len(args)
    return hint, False


def _coerce(name: str, value: Any) -> Any:
    """Convert a CLI string or YAML value to the field's type (YAML reads ``1e-3`` as a string)."""
    kind, optional = _base_type(_HINTS[name])
    if value is None or (optional and isinstance(value, str) and value.lower() in ("none", "null", "")):
        if not optional:
            raise ConfigError(f"{name} cannot be None")
        return None
    try:
        if kind is bool:
            if isinstance(value, str):
                if value.lower() not in ("true", "false", "1", "0", "yes", "no"):
                    raise ValueError(value)
                return value.lower() in ("true", "1", "yes")
            return bool(value)
        if kind is int:
            if isinstance(value, float) and not value.is_integer():
                raise ValueError(value)
            if isinstance(value, str):
                value = float(value) if any(c in value for c in ".eE") else int(value)
                if isinstance(value, float) and not value.is_integer():
                    raise ValueError(value)
            return int(value)
        if kind is float:
            return float(value)
        return str(value)
    except (TypeError, ValueError) as e:
        raise ConfigError(f"{name}={value!r} is not a valid {kind.__name__}") from e


def bundled_configs() -> dict[str, Path]:
    """The YAML configs that ship inside the package (``hf_varinit/configs/``), by file name."""
    return {p.name: p for p in sorted(BUNDLED_CONFIGS.glob("*.yaml"))}


def resolve_config_path(path: str | os.PathLike) -> Path:
    """A config file path as given, or else a bundled config of that name (``gpt2-12l-tiny`` or
    ``configs/gpt2-12l-tiny.yaml`` work from any directory and from a pip-installed package)."""
    p = Path(path)
    if p.is_file():
        return p
    bundled = bundled_configs()
    name = p.name if p.name.endswith(".yaml") else f"{p.name}.yaml"
    if name in bundled:
        return bundled[name]
    raise ConfigError(f"config file {str(path)!r} does not exist; give a YAML path or a bundled config name: "
                      f"{', '.join(sorted(n[:-5] for n in bundled)) or '(none installed)'}")


def load_yaml_options(path: str | os.PathLike) -> dict[str, Any]:
    """Read a YAML options file into flat ``field -> value``; unknown keys raise `ConfigError`."""
    import yaml

    p = resolve_config_path(path)
    try:
        raw = yaml.safe_load(p.read_text(encoding="utf-8")) or {}
    except OSError as e:
        raise ConfigError(f"cannot read config file {p}: {e}") from e
    except yaml.YAMLError as e:
        raise ConfigError(f"config file {p} is not valid YAML: {e}") from e
    if not isinstance(raw, dict):
        raise ConfigError(f"config file {p} must hold a mapping of options, got {type(raw).__name__}")
    flat: dict[str, Any] = {}
    for key, value in raw.items():
        if key in GROUPS:
            if not isinstance(value, dict):
                raise ConfigError(f"{p}: section {key!r} must be a mapping")
            valid = [f.name for f in dataclasses.fields(GROUPS[key])]
            for sub, v in value.items():
                if sub not in valid:
                    raise ConfigError(f"{p}: unknown key {key}.{sub!r}; valid keys of {key!r}: {valid}")
                flat[sub] = v
        elif key in FIELD_GROUP:
            flat[key] = value
        else:
            raise ConfigError(
                f"{p}: unknown key {key!r}; valid keys: sections {list(GROUPS)} or options {sorted(FIELD_GROUP)}"
            )
    return flat


def add_pretrain_arguments(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """Add ``--config`` and one ``--kebab-case`` flag per option field to ``parser``.

    Flags default to "not given" (`argparse.SUPPRESS`), so only the flags typed override a ``--config`` file.
    """
    parser.add_argument("--config", default=None, help="YAML file of options (sections model/data/training)")
    for group_name, cls in GROUPS.items():
        group = parser.add_argument_group(f"{group_name} options", cls.__doc__)
        for f in dataclasses.fields(cls):
            kind, _ = _base_type(_HINTS[f.name])
            flag = "--" + f.name.replace("_", "-")
            help_text = f"{f.metadata['help']} (default: {f.default})"
            if kind is bool:
                group.add_argument(flag, action=argparse.BooleanOptionalAction, default=argparse.SUPPRESS,
                                   help=help_text)
            else:
                group.add_argument(flag, dest=f.name, default=argparse.SUPPRESS, metavar=kind.__name__.upper(),
                                   help=help_text)
    return parser


def options_from_namespace(args: argparse.Namespace) -> PretrainOptions:
    """`PretrainOptions` from parsed flags: the ``--config`` file first, the given flags on top."""
    values: dict[str, Any] = {}
    config = getattr(args, "config", None)
    if config:
        values.update(load_yaml_options(config))
    values.update({k: v for k, v in vars(args).items() if k in FIELD_GROUP})
    return PretrainOptions.from_flat(values)


def parse_options(argv: list[str] | None = None) -> PretrainOptions:
    """Parse a command line (``sys.argv[1:]`` when None) into `PretrainOptions`."""
    parser = add_pretrain_arguments(argparse.ArgumentParser(description="Pretrain a GPT-2 / Llama and record V(W)."))
    return options_from_namespace(parser.parse_args(argv))
