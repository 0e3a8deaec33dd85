"""The optimal-variance rule: initialise every tracked tensor with s0^2 = V(W), its steady-state second moment.

V(W) comes from a variance report (``optimal:report=<folder | file | hub id>``) or from a table
passed in Python (``{"name": "optimal", "variances": {"layers.0.q": 4e-3, ...}}``). Tensors the table
lacks use the ``fallback`` rule. A report from another architecture is refused; a report of another
depth is mapped by relative depth only with ``allow-depth-interpolation``.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import ClassVar

from hf_varinit.arch import hidden_size, layer_key, num_layers, parse_layer_key, shape_differences
from hf_varinit.errors import ReportError, RuleError
from hf_varinit.init.roles import TensorRole
from hf_varinit.init.rules import Init, InitRule, ModelContext, _check_choice, get_rule, register_rule
from hf_varinit.report.report import VarianceReport


def _load_report(source: str) -> VarianceReport:
    """Load a report, cached on the source and the modification time of its files (a rewritten report reloads)."""
    path = Path(source)
    stamp = tuple(sorted((p.name, p.stat().st_mtime_ns) for p in path.iterdir() if p.is_file())) if path.is_dir() \
        else (path.stat().st_mtime_ns if path.exists() else None)
    return _load_report_cached(source, stamp)


@lru_cache(maxsize=16)
def _load_report_cached(source: str, stamp) -> VarianceReport:
    return VarianceReport.load(source)


def check_variances(variances: dict[str, float], source: str) -> dict[str, float]:
    """Refuse non-finite, zero or negative variances, naming the key."""
    out = {}
    for key, value in variances.items():
        v = float(value)
        if not math.isfinite(v) or v <= 0:
            raise ReportError(f"{source}: V(W) of {key!r} is {value!r}; variances must be finite and > 0")
        out[key] = v
    return out


def interpolate_depth(variances: dict[str, float], src_layers: int, dst_layers: int) -> dict[str, tuple[float, str]]:
    """Map per-layer V(W) onto another depth by relative depth (linear along depth).

    Returns key -> (variance, note naming the source layers used).
    """
    by_role: dict[str, dict[int, float]] = {}
    out: dict[str, tuple[float, str]] = {}
    for key, v in variances.items():
        layer, role = parse_layer_key(key)
        if layer is not None:
            by_role.setdefault(role, {})[layer] = v
        else:
            out[key] = (v, "")
    for role, layers in by_role.items():
        for j in range(dst_layers):
            pos = j * (src_layers - 1) / (dst_layers - 1) if dst_layers > 1 else 0.0
            lo, hi = math.floor(pos), math.ceil(pos)
            if lo not in layers or hi not in layers:
                continue
            w = pos - lo
            value = (1 - w) * layers[lo] + w * layers[hi]
            note = f"interpolated from layer {lo}" if lo == hi else f"interpolated from layers {lo}-{hi} (w={w:.2f})"
            out[layer_key(j, role)] = (value, note)
    return out


@dataclass(frozen=True)
class OptimalRule(InitRule):
    """s0^2 = V(W) per tracked tensor / Q/K/V slice, from a report or a variance table.

    Args:
        report: a report folder, a ``steady_state.json`` / ``variance.safetensors`` file, or a hub id.
        variances: key -> V(W) (keys as in `init_plan`'s ``key`` column, e.g. ``layers.3.q``).
        fallback: the rule for tensors the report lacks (default ``kaiming``).
        allow_depth_interpolation: map a report of another depth by relative depth.
        nonstationary: what to do with tensors the report marks not stationary: ``last`` (use the last
            recorded value, noted in the plan), ``skip`` (use the fallback) or ``error``.
    """

    name: ClassVar[str] = "optimal"
    report: str | None = None
    variances: dict | None = field(default=None, metadata={"spec": False}, hash=False, compare=False)
    fallback: str = "kaiming"
    allow_depth_interpolation: bool = False
    nonstationary: str = "last"

    def __post_init__(self):
        if (self.report is None) == (self.variances is None):
            raise RuleError(
                "rule 'optimal' needs exactly one of report=<folder | file | hub id> or variances={key: V(W)}; "
                "e.g. 'optimal:report=model_cards/gpt2-12l-tiny-kaiming'"
            )
        if not isinstance(self.fallback, str) or get_rule(self.fallback).name == "optimal":
            raise RuleError(f"rule 'optimal': fallback={self.fallback!r} must name another rule, e.g. kaiming")
        _check_choice(self.name, "nonstationary", self.nonstationary, ("last", "skip", "error"))
        if self.variances is not None:
            if not isinstance(self.variances, Mapping):
                raise RuleError("rule 'optimal': variances must be a dict {key: V(W)}; for a file use report=<path>")
            check_variances(self.variances, "variances")

    def weight_init(self, entry, ctx):
        raise RuleError("rule 'optimal' must be bound to a model first: call rule.bind(model), or use "
                        "from_config / apply_init / init_plan, which bind it")

    def bind(self, model) -> BoundOptimalRule:
        """Check the report against ``model`` and resolve its table to the model's layers."""
        fallback = get_rule(self.fallback)
        if self.variances is not None:
            table = {k: (v, "") for k, v in check_variances(self.variances, "variances").items()}
            return BoundOptimalRule(table, fallback, "variances table")
        report = _load_report(self.report)
        variances = check_variances(report.variances(nonstationary=self.nonstationary), self.report)
        config = getattr(model, "config", None)
        _check_architecture(report, config, self.report)
        src_depth, dst_depth = report.n_layer, num_layers(config) if config is not None else None
        if src_depth and dst_depth and src_depth != dst_depth:
            if not self.allow_depth_interpolation:
                raise ReportError(
                    f"report {self.report!r} has {src_depth} layers but the model has {dst_depth}; add "
                    "',allow-depth-interpolation' to the rule spec to map layers by relative depth"
                )
            table = interpolate_depth(variances, src_depth, dst_depth)
        else:
            table = {k: (v, "") for k, v in variances.items()}
        return BoundOptimalRule(table, fallback, f"report {self.report}")


def _check_architecture(report: VarianceReport, config, source: str) -> None:
    if config is None:
        return
    model_type = getattr(config, "model_type", None)
    if report.model_type and model_type and report.model_type != model_type:
        raise ReportError(
            f"report {source!r} was measured on model_type {report.model_type!r}, but the model is "
            f"{model_type!r}; use a report of the same architecture"
        )
    report_width = hidden_size(report.config)
    width = hidden_size(config)
    if report_width and width and int(report_width) != width:
        raise ReportError(
            f"report {source!r} was measured at hidden size {report_width}, but the model has {width}; "
            "V(W) depends on the width, so use a report of the same width"
        )
    differences = shape_differences(report.config, config)
    if differences:
        key, theirs, mine = differences[0]
        raise ReportError(
            f"report {source!r} was measured with {key}={theirs}, but the model has {key}={mine}; "
            "the tensors' shapes differ, so use a report of the same architecture"
        )


@dataclass(frozen=True)
class BoundOptimalRule(InitRule):
    """`OptimalRule` resolved against one model: key -> (V(W), note), plus the fallback rule."""

    name: ClassVar[str] = "optimal"
    table: dict = field(hash=False, compare=False)
    fallback_rule: InitRule = field(hash=False, compare=False)
    source: str = ""

    def resolve(self, entry: TensorRole, ctx: ModelContext) -> Init:
        if entry.key in self.table and entry.role not in ("norm", "other"):
            variance, note = self.table[entry.key]
            return Init("normal", std=math.sqrt(variance), note=note or f"V(W) from {self.source}")
        init = self.fallback_rule.resolve(entry, ctx)
        if entry.tracked and init.distribution != "hf":
            return Init(init.distribution, init.std, init.value, note=f"fallback {self.fallback_rule.spec}")
        return init

    @property
    def spec(self) -> str:
        return f"optimal({self.source})"


register_rule(OptimalRule.name, OptimalRule)
