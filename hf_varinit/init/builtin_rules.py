"""The built-in init rules: ``hf``, ``normal``, ``trunc_normal``, ``xavier``, ``kaiming``, ``lecun``, ``gpt2``.

Each is a frozen dataclass whose fields are its spec keys, validated in ``__post_init__``; `hf_varinit.init.rules`
names them in its registry and imports this module on the first lookup of one of them.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import ClassVar

import torch

from hf_varinit.errors import RuleError, shown
from hf_varinit.init.roles import EMBEDDING_ROLES, RESIDUAL_ROLES, TensorRole
from hf_varinit.init.rules import (
    MIN_SCALE,
    Init,
    InitRule,
    ModelContext,
    check_choice,
    check_std,
    is_finite_number,
    truncated_std_factor,
)

__all__ = ["GPT2Rule", "HFRule", "KaimingRule", "LecunRule", "NormalRule", "TruncNormalRule", "XavierRule"]


def _sample(dist: str, std: float, note: str = "") -> Init:
    return Init(dist, std=float(std), note=note)


def _embedding_init(ctx: ModelContext, std: float | None) -> Init:
    return Init("normal", std=std or ctx.initializer_range, note="embedding: initializer_range")


@dataclass(frozen=True)
class HFRule(InitRule):
    """The model's own ``_init_weights``, unchanged."""

    name: ClassVar[str] = "hf"

    def resolve(self, entry: TensorRole, ctx: ModelContext) -> Init:
        return Init("hf")


@dataclass(frozen=True)
class NormalRule(InitRule):
    """Every weight (embeddings and heads included) from N(0, std^2)."""

    name: ClassVar[str] = "normal"
    std: float = 0.02

    def __post_init__(self):
        check_std(self.name, self.std)

    def weight_init(self, entry, ctx):
        return _sample("normal", self.std)


@dataclass(frozen=True)
class TruncNormalRule(InitRule):
    """Every weight from N(0, std^2) truncated at ±``cutoff``·std (``torch.nn.init.trunc_normal_(std=std,
    a=-cutoff*std, b=cutoff*std)``). The plan shows the std of the values drawn: 0.880·std for cutoff 2."""

    name: ClassVar[str] = "trunc_normal"
    std: float = 0.02
    cutoff: float = 2.0

    def __post_init__(self):
        check_std(self.name, self.std)
        check_std(self.name, self.cutoff, "cutoff", bounded=False)  # any cutoff > 0 is a distribution
        if self.std * truncated_std_factor(self.cutoff) < MIN_SCALE:
            raise RuleError(f"rule 'trunc_normal': std={self.std:g} truncated at cutoff={self.cutoff:g} draws values "
                            f"below {MIN_SCALE:.1e}, so float32 weights would all be 0; raise the std or the cutoff")

    def weight_init(self, entry, ctx):
        realised = self.std * truncated_std_factor(self.cutoff)
        return Init("trunc_normal", std=realised, cutoff=self.cutoff,
                    note=f"N(0, {self.std:g}^2) truncated at ±{self.cutoff:g} std")


@dataclass(frozen=True)
class _FanRule(InitRule):
    """Shared parts of fan-based rules: ``dist`` and the embedding policy."""

    dist: str = "normal"
    embedding_std: float | None = None

    def __post_init__(self):
        check_choice(self.name, "dist", self.dist, ("normal", "uniform"))
        if self.embedding_std is not None:
            check_std(self.name, self.embedding_std, "embedding_std")

    def weight_init(self, entry, ctx):
        if entry.role in EMBEDDING_ROLES:
            return _embedding_init(ctx, self.embedding_std)
        if not entry.fan_in or not entry.fan_out:  # a dimension of 0: the tensor has no elements to draw
            return Init("constant", value=0.0, note="empty tensor (a fan of 0)")
        return _sample(self.dist, self.fan_std(entry))

    def fan_std(self, entry: TensorRole) -> float:
        raise NotImplementedError


@dataclass(frozen=True)
class XavierRule(_FanRule):
    """Glorot: std = gain * sqrt(2 / (fan_in + fan_out)). Embeddings keep ``initializer_range``."""

    name: ClassVar[str] = "xavier"
    gain: float = 1.0

    def __post_init__(self):
        super().__post_init__()
        check_std(self.name, self.gain, "gain")

    def fan_std(self, entry):
        return self.gain * math.sqrt(2.0 / (entry.fan_in + entry.fan_out))


NONLINEARITIES = ("relu", "leaky_relu", "tanh", "linear", "sigmoid", "selu")


@dataclass(frozen=True)
class KaimingRule(_FanRule):
    """He: std = gain / sqrt(fan), fan_in by default, ReLU gain. Embeddings keep ``initializer_range``."""

    name: ClassVar[str] = "kaiming"
    mode: str = "fan_in"
    nonlinearity: str = "relu"
    a: float = 0.0

    def __post_init__(self):
        super().__post_init__()
        check_choice(self.name, "mode", self.mode, ("fan_in", "fan_out"))
        check_choice(self.name, "nonlinearity", self.nonlinearity, NONLINEARITIES)
        if not is_finite_number(self.a):
            raise RuleError(f"rule 'kaiming': a={shown(self.a)} is invalid; it must be a finite number (leaky_relu "
                            "slope)")
        try:
            torch.nn.init.calculate_gain(self.nonlinearity, self.a if self.nonlinearity == "leaky_relu" else None)
        except (OverflowError, ValueError):
            raise RuleError(f"rule 'kaiming': a={self.a:g} is out of range for nonlinearity={self.nonlinearity!r}; "
                            "use a leaky_relu slope such as a=0.01") from None

    def fan_std(self, entry):
        fan = entry.fan_in if self.mode == "fan_in" else entry.fan_out
        param = self.a if self.nonlinearity == "leaky_relu" else None
        return torch.nn.init.calculate_gain(self.nonlinearity, param) / math.sqrt(fan)


@dataclass(frozen=True)
class LecunRule(_FanRule):
    """LeCun: std = 1 / sqrt(fan_in). Embeddings keep ``initializer_range``."""

    name: ClassVar[str] = "lecun"

    def fan_std(self, entry):
        return 1.0 / math.sqrt(entry.fan_in)


@dataclass(frozen=True)
class GPT2Rule(InitRule):
    """GPT-2: N(0, std^2) everywhere, residual projections scaled by 1/sqrt(2 n_layer).

    ``std`` defaults to the config's ``initializer_range``. Per-role scales, the handful of numbers a pilot-free
    baseline tunes: ``embedding_std`` (token and position embeddings), ``head_std`` (an untied output head) and
    ``residual_scale`` (a multiplier on the residual projections' std/sqrt(2 n_layer)), e.g.
    ``gpt2:embedding_std=0.06,residual_scale=3``.
    """

    name: ClassVar[str] = "gpt2"
    std: float | None = None
    embedding_std: float | None = None
    head_std: float | None = None
    residual_scale: float = 1.0

    def __post_init__(self):
        for key in ("std", "embedding_std", "head_std"):
            if getattr(self, key) is not None:
                check_std(self.name, getattr(self, key), key)
        check_std(self.name, self.residual_scale, "residual_scale")

    def weight_init(self, entry, ctx):
        std = self.std or ctx.initializer_range
        if entry.role in EMBEDDING_ROLES and self.embedding_std is not None:
            return _sample("normal", self.embedding_std, note="embedding_std")
        if entry.role == "head" and self.head_std is not None:
            return _sample("normal", self.head_std, note="head_std")
        if entry.role in RESIDUAL_ROLES and ctx.n_layer:
            scaled = f"{self.residual_scale:g} x " if self.residual_scale != 1.0 else ""
            return _sample("normal", self.residual_scale * std / math.sqrt(2 * ctx.n_layer),
                           note=f"residual {scaled}1/sqrt(2 n_layer)")
        return _sample("normal", std)
