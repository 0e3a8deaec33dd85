"""Options of the pretraining loop: three dataclass groups, the one source of truth for the CLI, YAML and defaults.

Every option is a dataclass field with ``metadata={"help": ...}``; the dataclasses validate themselves in
``__post_init__``. ``hf-varinit pretrain`` turns the fields into ``--kebab-case`` flags (`hf_varinit.cli.flags`).
A config names a YAML file (the sections ``model:``, ``data:`` and ``training:``, or the same keys flat) or a
bundled config; `build_options` reads it, puts the given values on top and lets the dataclass defaults fill the
rest. `command_line` writes a run's options back as the flags that regenerate it.

Example:
    >>> options = build_options("gpt2-tiny-test", max_steps=4)  # doctest: +SKIP
    >>> command_line(options)  # doctest: +SKIP
    'hf-varinit pretrain --n-layer 2 --n-embd 32 --block-size 32 --vocab-size 512 --max-chars 200000 ...'
"""

from __future__ import annotations

import dataclasses
import math
import os
import shlex
import typing
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from hf_varinit.errors import ConfigError

BUNDLED_CONFIGS = Path(__file__).resolve().parents[1] / "configs"
MODEL_TYPES = ("gpt2", "llama")
OPTIMIZERS = ("adamw", "sgd")
MIXED_PRECISION = ("no", "bf16", "fp16")
REPORT_TO = ("none", "tensorboard", "trackio", "wandb")
ON_NONFINITE = ("error", "skip")
LR_SCHEDULES = ("cosine", "constant")
NONE_WORDS = ("none", "null", "")  # what an optional option reads as None in a YAML file, as on the command line


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
    warmup_steps: int = field(default=0, metadata={"help": "linear warmup steps before the schedule"})
    lr_schedule: str = field(default="cosine", metadata={"help": "after warmup: cosine (decay to 0 at max_steps) | "
                                                         "constant"})
    max_steps: int = field(
        default=300,
        metadata={"help": "optimizer steps; with --resume a larger value continues the run (finished or not) to "
                          "the new value: the warmup + cosine schedule is rebuilt over the new max_steps, so after "
                          "a finished run's decay the lr rises again (a smaller value is refused)"},
    )
    batch_size: int = field(
        default=8, metadata={"help": "sequences per micro-batch over all processes (global; split across them)"}
    )
    grad_accum: int = field(default=1, metadata={"help": "micro-batches per optimizer step"})
    grad_clip: float | None = field(default=1.0, metadata={"help": "max gradient norm (None or 0 = no clipping)"})
    mixed_precision: str = field(default="no", metadata={"help": "no | bf16 | fp16 (fp16 with a grad scaler; on CPU "
                                                                     "torch's float16 autocast)"})
    compile: bool = field(default=False, metadata={"help": "torch.compile the model (its compile time is reported "
                                                           "apart from the step time)"})
    eval_every: int | None = field(default=50, metadata={"help": "evaluate every N steps (and at the end)"})
    eval_batches: int | None = field(default=20, metadata={"help": "eval batches per evaluation (None = all)"})
    log_every: int = field(default=10, metadata={"help": "write a metrics line every N steps"})
    record_every: int = field(default=5, metadata={"help": "record the weight statistics every N steps"})
    checkpoint_every: int | None = field(
        default=100,
        metadata={"help": "checkpoint every N steps and at the last step (None = only when stopped by Ctrl-C or "
                          "SIGTERM)"},
    )
    keep_last: int | None = field(default=2, metadata={"help": "complete checkpoints to keep (None = all)"})
    output_dir: str = field(default="runs/pretrain", metadata={"help": "folder of every output file"})
    resume: bool = field(
        default=False,
        metadata={"help": "continue from the newest complete checkpoint in --output-dir (after Ctrl-C, SIGTERM "
                          "or a crash; or past a finished run's end with a larger --max-steps)"},
    )
    report_to: str = field(
        default="none",
        metadata={"help": "none | tensorboard | trackio | wandb: the metrics, and each record's per-layer Q/K/V "
                          "variance (variance/layers.N.q|k|v), also go to this tracker"},
    )
    on_nonfinite: str = field(
        default="error", metadata={"help": "error: stop at a NaN/inf loss | skip: skip that optimizer step"}
    )
    disable_tqdm: bool = field(
        default=False, metadata={"help": "no progress bars (TQDM_DISABLE=1 in the environment does the same)"}
    )
    collective_timeout: int = field(
        default=600,
        metadata={"help": "seconds a process waits for the others in a collective (all-reduce, barrier, sharded "
                          "save) before it stops with an error naming the step and the missing rank; the guard for "
                          "launchers that do not stop the other processes when one dies (srun, processes started by "
                          "hand)"},
    )

    def __post_init__(self):
        _check_choice("optimizer", self.optimizer, OPTIMIZERS)
        _check_choice("mixed_precision", self.mixed_precision, MIXED_PRECISION)
        _check_choice("report_to", self.report_to, REPORT_TO)
        _check_choice("on_nonfinite", self.on_nonfinite, ON_NONFINITE)
        _check_choice("lr_schedule", self.lr_schedule, LR_SCHEDULES)
        _check_positive("training", max_steps=self.max_steps, batch_size=self.batch_size, grad_accum=self.grad_accum,
                        eval_every=self.eval_every, eval_batches=self.eval_batches, log_every=self.log_every,
                        record_every=self.record_every, checkpoint_every=self.checkpoint_every,
                        keep_last=self.keep_last, collective_timeout=self.collective_timeout)
        ranges = {"seed": (0 <= self.seed < 2**32, "in [0, 2**32), e.g. 0"), "lr": (self.lr > 0, "> 0"),
                  "warmup_steps": (self.warmup_steps >= 0, ">= 0"), "weight_decay": (self.weight_decay >= 0, ">= 0"),
                  "momentum": (0.0 <= self.momentum < 1.0, "in [0, 1)"),
                  "grad_clip": (self.grad_clip is None or self.grad_clip >= 0, ">= 0 (0 or None = no clipping)")}
        for name, (ok, allowed) in ranges.items():
            value = getattr(self, name)
            if not ok or (isinstance(value, float) and not math.isfinite(value)):
                raise ConfigError(f"{name}={value} must be a finite number {allowed}")
        if self.momentum and self.optimizer != "sgd":
            raise ConfigError(f"momentum={self.momentum} applies to --optimizer sgd only (optimizer is adamw)")
        if not self.output_dir:
            raise ConfigError("output_dir must be set")


GROUPS: dict[str, type] = {"model": ModelOptions, "data": DataOptions, "training": TrainingOptions}
FIELD_GROUP: dict[str, str] = {f.name: g for g, cls in GROUPS.items() for f in dataclasses.fields(cls)}
HINTS: dict[str, Any] = {name: hint for cls in GROUPS.values() for name, hint in typing.get_type_hints(cls).items()}
OPTIONAL: frozenset[str] = frozenset(name for name, hint in HINTS.items() if type(None) in typing.get_args(hint))


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
        """Build from flat ``field -> value`` (typed values); the dataclass defaults fill the missing fields.

        Args:
            values (`dict`): option name -> value, e.g. ``{"n_layer": 2, "lr": 1e-3}``.

        Raises:
            `ConfigError`: an unknown name, None for an option that needs a value, or a value its group rejects.
        """
        unknown = sorted(set(values) - set(FIELD_GROUP))
        if unknown:
            raise ConfigError(f"unknown option(s) {unknown}; valid options: {sorted(FIELD_GROUP)}")
        missing = sorted(name for name, value in values.items() if value is None and name not in OPTIONAL)
        if missing:
            raise ConfigError(f"{', '.join(missing)} cannot be None; give a value or leave the option out")
        groups: dict[str, dict[str, Any]] = {g: {} for g in GROUPS}
        for name, value in values.items():
            groups[FIELD_GROUP[name]][name] = value
        return cls(**{g: GROUPS[g](**kw) for g, kw in groups.items()})


# ----------------------------------------------------------------------------- YAML files


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
    """Read a YAML options file into flat ``field -> value`` (as YAML typed them); unknown keys raise `ConfigError`."""
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


def _typed(path: Path, name: str, value: Any) -> Any:
    """A YAML value as its option's type (as its flag would read it: YAML 1.1 reads ``1e-3`` as text, and an
    optional option reads ``none`` as None); a value of another type raises `ConfigError` naming file, key and value.
    """
    if isinstance(value, (dict, list)):
        raise ConfigError(f"{path}: {name} must be a single value, got {value!r}")
    if value is None or (name in OPTIONAL and isinstance(value, str) and value.strip().lower() in NONE_WORDS):
        return None
    kind = next(k for k in (*typing.get_args(HINTS[name]), HINTS[name]) if k is not type(None))
    accepted = {bool: (bool,), int: (int, str), float: (int, float, str), str: (int, float, str)}[kind]
    if isinstance(value, accepted) and (kind is bool or not isinstance(value, bool)):
        try:
            return kind(value)
        except ValueError:  # text that is not a number
            pass
    what = {bool: "true or false", int: "an integer", float: "a number", str: "a string"}.get(kind, kind)
    raise ConfigError(f"{path}: {name}={value!r} is not {what}")


def config_values(path: str | os.PathLike) -> dict[str, Any]:
    """The options of a YAML file (path or bundled name) as flat ``field -> value``, each of its option's type.

    Raises:
        `ConfigError`: a missing file, bad YAML, an unknown key, or a value of the wrong type (naming it).
    """
    p = resolve_config_path(path)
    return {name: _typed(p, name, value) for name, value in load_yaml_options(p).items()}


def build_options(config: str | os.PathLike | None = None, **values: Any) -> PretrainOptions:
    """`PretrainOptions` of a YAML config (path or bundled name) with ``values`` on top; the defaults fill the rest.

    Args:
        config (`str` or `os.PathLike`, *optional*): e.g. ``"gpt2-12l-tiny"`` or ``"my.yaml"``.
        values: option name -> typed value, e.g. ``max_steps=4, init="kaiming"``.

    Raises:
        `ConfigError`: an unknown option or YAML key, or a value its option rejects (the message names it).

    Example:
        >>> build_options("gpt2-tiny-test", max_steps=4).training.max_steps  # doctest: +SKIP
        4
    """
    flat = config_values(config) if config is not None else {}
    flat.update(values)
    return PretrainOptions.from_flat(flat)


def command_line(options: PretrainOptions, *, program: str = "hf-varinit pretrain",
                 exclude: Iterable[str] = ("resume",)) -> str:
    """The command that regenerates ``options``: ``program`` and a flag for every value that is not the default.

    Args:
        options (`PretrainOptions`): the options of a run.
        program (`str`): the command the flags follow.
        exclude (`Iterable[str]`): options left out (by default ``resume``: rerunning starts from scratch).
    """
    def flag(name: str) -> str:  # as `hf_varinit.cli.flags` names them
        return "--" + name.replace("_", "-")

    words = shlex.split(program)
    skip = set(exclude)
    for group in GROUPS:
        for f in dataclasses.fields(GROUPS[group]):
            value = getattr(getattr(options, group), f.name)
            if f.name in skip or value == f.default:
                continue
            if isinstance(value, bool):
                words.append(flag(f.name) if value else flag(f"no_{f.name}"))
            else:
                words += [flag(f.name), "none" if value is None else str(value)]
    return shlex.join(words)
