"""Init rules: what a rule is (`InitRule` -> `Init` per tensor), the checks rules share, and the registry of names.

The built-in rules live in `hf_varinit.init.builtin_rules` (``optimal`` in `hf_varinit.init.optimal`); the registry
names them and imports their module on the first lookup.

A rule spec is a string ``name[:key=value,...]`` (``"kaiming:mode=fan_out"``) or a dict
(``{"name": "normal", "std": 0.02}``). Rules are frozen dataclasses: their fields are the spec's keys,
validated in ``__post_init__``. Biases start at zero and norm weights at one under every rule but
``hf``, which defers to the model's own ``_init_weights``.
"""

from __future__ import annotations

import dataclasses
import importlib
import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, ClassVar

import torch

from hf_varinit.errors import RuleError, shown
from hf_varinit.init.roles import TensorRole
from hf_varinit.init.specs import check_type, coerce, parse_spec

DISTRIBUTIONS = ("normal", "uniform", "trunc_normal")


@dataclass(frozen=True)
class Init:
    """What one tensor gets: a distribution with a std (zero mean), a constant, or the model's own init."""

    distribution: str  # normal | uniform | trunc_normal | constant | hf
    std: float | None = None  # the std of the values drawn (for trunc_normal: after truncation)
    value: float | None = None
    note: str = ""
    cutoff: float = 2.0  # trunc_normal: truncation at ±cutoff standard deviations of the underlying normal

    def describe(self) -> str:
        if self.distribution == "constant":
            return f"constant({self.value:g})"
        return self.distribution


@dataclass(frozen=True)
class ModelContext:
    """What a rule may know about the model as a whole."""

    model_type: str | None
    n_layer: int | None
    hidden_size: int | None
    initializer_range: float
    config: Any = None


class InitRule:
    """Base class of init rules. Subclasses are frozen dataclasses and implement `weight_init`."""

    name: ClassVar[str] = ""

    def resolve(self, entry: TensorRole, ctx: ModelContext) -> Init:
        """The init for one tensor: biases zero, norm weights one, weights per `weight_init`."""
        if entry.role == "bias":
            return Init("constant", value=0.0)
        if entry.role == "norm":
            return Init("constant", value=1.0)
        if entry.role == "other":
            return Init("hf", note="not covered by the role table")
        return self.weight_init(entry, ctx)

    def weight_init(self, entry: TensorRole, ctx: ModelContext) -> Init:
        raise NotImplementedError

    def bind(self, model) -> InitRule:
        """Hook for rules that check themselves against a model before use (see `OptimalRule`)."""
        return self

    @property
    def spec(self) -> str:
        """The canonical spec string, e.g. ``kaiming:mode=fan_out`` (defaults left out)."""
        parts = []
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if f.metadata.get("spec", True) and value != f.default:
                parts.append(f"{f.name}={_format_value(value)}")
        return self.name + (":" + ",".join(parts) if parts else "")

    def __str__(self) -> str:
        return self.spec


def _format_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


# Weights are float32 (or bf16, of the same range): a std or gain past MAX_SCALE draws infinite weights, and a
# std below MIN_SCALE (float32's smallest normal number) draws weights that are all 0 or denormal.
MAX_SCALE = float(torch.finfo(torch.float32).max) / 1e3
MIN_SCALE = float(torch.finfo(torch.float32).tiny)


def is_finite_number(value: Any) -> bool:
    """A real number (not a bool) within float range."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return False
    try:
        return math.isfinite(value)
    except OverflowError:  # an int past float range
        return False


def check_std(name: str, value: float, key: str = "std", *, bounded: bool = True) -> None:
    """A finite number > 0 (and, if ``bounded``, small enough that float32 weights drawn with it stay finite)."""
    if not is_finite_number(value) or value <= 0:
        raise RuleError(f"rule {name!r}: {key}={shown(value)} is invalid; it must be a finite number > 0, "
                        f"e.g. {key}=0.02")
    if bounded and value > MAX_SCALE:
        raise RuleError(f"rule {name!r}: {key}={value:g} is too large: float32 weights drawn with it would be "
                        f"infinite; use {key} <= {MAX_SCALE:.0e} (typical values are near 0.02)")
    if bounded and value < MIN_SCALE:
        raise RuleError(f"rule {name!r}: {key}={value:g} is too small: float32 weights drawn with it would all be 0; "
                        f"use {key} >= {MIN_SCALE:.1e} (typical values are near 0.02)")


def check_choice(name: str, key: str, value: str, choices: tuple[str, ...]) -> None:
    if value not in choices:
        raise RuleError(f"rule {name!r}: {key}={shown(value)} is invalid; valid choices: {', '.join(choices)}")


def truncated_std_factor(cutoff: float) -> float:
    """std of N(0, 1) truncated to [-cutoff, cutoff] (0.880 for cutoff 2)."""
    if cutoff < 1e-2:  # the closed form below cancels to nothing (or below zero); its series is exact here
        return cutoff / math.sqrt(3) * math.sqrt(1 - 2 * cutoff * cutoff / 15)
    if cutoff > 40:  # the truncated mass is below double precision (and cutoff * pdf would be inf * 0)
        return 1.0
    pdf = math.exp(-0.5 * cutoff * cutoff) / math.sqrt(2 * math.pi)
    mass = math.erf(cutoff / math.sqrt(2))
    return math.sqrt(1 - 2 * cutoff * pdf / mass)


_REGISTRY: dict[str, Callable[..., InitRule]] = {}
# The built-in rules, defined in their own modules: name -> "module:attribute", imported on the first lookup (the way
# transformers' auto classes resolve a name), so every built-in rule resolves whichever module was imported first.
_BUILT_IN: dict[str, str] = {
    **{name: f"hf_varinit.init.builtin_rules:{cls}" for name, cls in (
        ("hf", "HFRule"), ("normal", "NormalRule"), ("trunc_normal", "TruncNormalRule"), ("xavier", "XavierRule"),
        ("kaiming", "KaimingRule"), ("lecun", "LecunRule"), ("gpt2", "GPT2Rule"))},
    "optimal": "hf_varinit.init.optimal:OptimalRule",
}


def _factory(name: str) -> Callable[..., InitRule] | None:
    """The factory registered as ``name`` (a built-in defined elsewhere is imported now), or None."""
    if name not in _REGISTRY and name in _BUILT_IN:
        module, _, attribute = _BUILT_IN[name].partition(":")
        _REGISTRY[name] = getattr(importlib.import_module(module), attribute)
    return _REGISTRY.get(name)


def register_rule(name: str, factory: Callable[..., InitRule], *, overwrite: bool = False) -> None:
    """Register a rule factory under ``name`` (unique unless ``overwrite``).

    Args:
        name (`str`): the name used in specs, e.g. ``"my_rule"``.
        factory (`Callable[..., InitRule]`): called with the spec's keys as keyword arguments;
            a dataclass `InitRule` subclass is the usual choice.

    Example:
        >>> @dataclass(frozen=True)
        ... class Half(InitRule):
        ...     name = "half"
        ...     def weight_init(self, entry, ctx): return Init("normal", std=0.5 / entry.fan_in ** 0.5)
        >>> register_rule("half", Half)
    """
    if not name or not name.replace("_", "").replace("-", "").isalnum():
        raise RuleError(f"rule name {shown(name)} is invalid: use letters, digits, '_' or '-'")
    if (name in _REGISTRY or name in _BUILT_IN) and not overwrite:
        raise RuleError(f"a rule named {shown(name)} is already registered; pick another name or pass overwrite=True")
    _BUILT_IN.pop(name, None)
    _REGISTRY[name] = factory


def list_rules() -> list[str]:
    """The names of all registered rules."""
    return sorted(set(_REGISTRY) | set(_BUILT_IN))


def build_rule(name: str, params: Mapping[str, Any]) -> InitRule:
    """Instantiate a registered rule, checking every key against its fields and every value against their types."""
    factory = _factory(name) if isinstance(name, str) else None
    if factory is None:
        raise RuleError(f"unknown init rule {shown(name)}; valid rules: {', '.join(list_rules())}")
    if dataclasses.is_dataclass(factory):
        fields = {f.name: f for f in dataclasses.fields(factory) if f.init}
        unknown = sorted((k for k in params if k not in fields), key=repr)
        if unknown:
            valid = ", ".join(fields) or "(none)"
            raise RuleError(f"rule {name!r} has no key {', '.join(map(shown, unknown[:5]))}; valid keys: {valid}")
        params = {k: check_type(name, fields[k], coerce(name, fields[k], v)) for k, v in params.items()}
    try:
        return factory(**params)
    except TypeError as exc:
        raise RuleError(f"rule {name!r}: {shown(str(exc), 300)[1:-1]}") from None


def get_rule(spec: str | Mapping[str, Any] | InitRule) -> InitRule:
    """Turn a rule spec into an `InitRule`.

    Args:
        spec (`str | dict | InitRule`): ``"kaiming"``, ``"normal:std=0.02"``,
            ``"optimal:report=model_cards/run,fallback=kaiming"``, ``{"name": "xavier", "dist": "uniform"}``,
            or a rule instance (returned as is).

    Raises:
        RuleError: unknown name or key, or an invalid value; the message lists the valid choices.
    """
    if isinstance(spec, InitRule):
        return spec
    if isinstance(spec, Mapping):
        params = dict(spec)
        name = params.pop("name", None)
        if not isinstance(name, str):
            raise RuleError(f"rule dict {shown(dict(spec), 200)} needs a 'name' key (a string); valid rules: "
                            f"{', '.join(list_rules())}")
        return build_rule(name, params)
    if not isinstance(spec, str) or not spec.strip():
        raise RuleError(f"rule spec {shown(spec)} is empty; valid rules: {', '.join(list_rules())}")
    name, params = parse_spec(spec)
    return build_rule(name, params)


__all__ = [
    "Init",
    "InitRule",
    "ModelContext",
    "get_rule",
    "list_rules",
    "register_rule",
]
