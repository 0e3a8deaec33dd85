"""The optimal-variance rule: initialise every tracked tensor with s0^2 = V(W), its steady-state second moment.

V(W) comes from a table of V(W) per tensor key (`VarianceTable`): read from a report (``optimal:report=<folder |
file | bundled name | hub id>``), taken from a report in memory (``loaded=``), or passed in Python
(``{"name": "optimal", "variances": {"layers.0.q": 4e-3, ...}}``). Tensors the table lacks use the ``fallback`` rule.
A report is checked against the model by the shapes of the tracked tensors (the measured model is rebuilt on the
meta device from its stored config, `hf_varinit.init.compatibility`): another architecture or tensor shape is
refused, naming the first mismatching tensor; a report of another depth is mapped by relative depth only with
``allow-depth-interpolation``; one of another width only with ``width-transfer=fan-in`` (V(W) scaled by
fan_in(source) / fan_in(target)), ``width-transfer=fit`` / ``fit-pooled`` (the power law of a multi-run report,
per tensor or per role) or ``width-transfer=copy``, which also map depth (width first, on the source's layers,
then depth: `hf_varinit.init.transfer`).
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, ClassVar

from hf_varinit.arch.config import hidden_size, num_layers
from hf_varinit.errors import ReportError, RuleError
from hf_varinit.init.compatibility import check_compatible, table_fans
from hf_varinit.init.roles import TRACKED_ROLES, TensorRole, tracked_roles
from hf_varinit.init.rules import Init, InitRule, ModelContext, check_choice, get_rule
from hf_varinit.init.table import VarianceTable, check_variances, read_variance_table
from hf_varinit.init.transfer import (
    WIDTH_TRANSFERS,
    copy_table,
    fan_in_table,
    fit_table,
    interpolate_depth,
    pooled_fit_table,
)

NONSTATIONARY = ("last", "skip", "error")


@dataclass(frozen=True)
class OptimalRule(InitRule):
    """s0^2 = V(W) per tracked tensor / Q/K/V slice, from a report or a variance table.

    Args:
        report: a report folder, a ``steady_state.json`` / ``variance.safetensors`` file, the name of a report
            bundled with the package, or a hub id.
        variances: key -> V(W) (keys as in `init_plan`'s ``key`` column, e.g. ``layers.3.q``).
        loaded: a `VarianceReport` (or a `VarianceTable`) already in memory, instead of ``report``.
        fallback: the rule for tensors the report lacks (default ``kaiming``).
        allow_depth_interpolation: map a report of another depth by relative depth.
        width_transfer: map a report of another width: ``fan-in`` (V(W) * fan_in source / fan_in target),
            ``fit`` (V(W) = c * fan_in^-alpha per tensor, fitted by ``hf-varinit report RUN_A RUN_B ...``),
            ``fit-pooled`` (one exponent per role, shrunk toward 0 by its standard error over the layers, from the
            run of the nearest width: `hf_varinit.init.transfer.pooled_fit_table`) or ``copy`` (V(W) unchanged,
            exponent 0: the baseline a width law must beat); each also maps depth.
        nonstationary: what to do with tensors the report marks not stationary: ``last`` (use the last
            recorded value, noted in the plan), ``skip`` (use the fallback) or ``error``.
        roles: only tensors of these roles take V(W), joined by ``+`` (``q+k+v``; ``embedding+position+attn_out+
            mlp_out``); the others use the fallback. For ablations: which tensors carry a gain?
    """

    name: ClassVar[str] = "optimal"
    report: str | os.PathLike | None = None
    variances: dict | None = field(default=None, metadata={"spec": False}, hash=False, compare=False)
    loaded: Any = field(default=None, metadata={"spec": False}, hash=False, compare=False)
    fallback: str = "kaiming"
    allow_depth_interpolation: bool = False
    nonstationary: str = "last"
    width_transfer: str | None = None
    roles: str | None = None

    def __post_init__(self):
        if isinstance(self.report, os.PathLike):
            object.__setattr__(self, "report", os.fspath(self.report))
        if self.report is not None and (not isinstance(self.report, str) or not self.report.strip()):
            raise RuleError(f"rule 'optimal': report={self.report!r} must be a folder, a file, a bundled report's "
                            "name or a hub id (a non-empty string), e.g. 'optimal:report=gpt2-12l-tiny-qkv-dynamics'")
        if self.loaded is not None and not (isinstance(self.loaded, VarianceTable)
                                            or callable(getattr(self.loaded, "variance_table", None))):
            raise RuleError(f"rule 'optimal': loaded={self.loaded!r} must be a VarianceReport or a VarianceTable; for "
                            "a folder, a file or a hub id use report=<...>")
        if sum(x is not None for x in (self.report, self.variances, self.loaded)) != 1:
            raise RuleError(
                "rule 'optimal' needs exactly one of report=<folder | file | bundled name | hub id> or "
                "variances={key: V(W)}; e.g. 'optimal:report=gpt2-12l-tiny-qkv-dynamics'"
            )
        if not isinstance(self.fallback, str) or get_rule(self.fallback).name == "optimal":
            raise RuleError(f"rule 'optimal': fallback={self.fallback!r} must name another rule, e.g. kaiming")
        if not isinstance(self.allow_depth_interpolation, bool):
            raise RuleError(f"rule 'optimal': allow_depth_interpolation={self.allow_depth_interpolation!r} must be "
                            "true or false")
        check_choice(self.name, "nonstationary", self.nonstationary, NONSTATIONARY)
        if self.width_transfer is not None:
            check_choice(self.name, "width_transfer", self.width_transfer, WIDTH_TRANSFERS)
        if self.roles is not None:
            selected_roles(self.roles)
        if self.variances is not None:
            _check_table_types(self.variances)
            check_variances(self.variances, "variances")

    @property
    def spec(self) -> str:
        spec = super().spec
        if self.loaded is None:
            return spec
        rest = spec.partition(":")[2]
        origin = getattr(self.loaded, "origin", None) or getattr(self.loaded, "source", None)
        return f"optimal:report={origin or '<in-memory report>'}" + (f",{rest}" if rest else "")

    def weight_init(self, entry, ctx):
        raise RuleError("rule 'optimal' must be bound to a model first: call rule.bind(model), or use "
                        "from_config / apply_init / init_plan, which bind it")

    def table(self) -> VarianceTable:
        """The V(W) table this rule reads (a report is read, and cached, on the first call)."""
        if self.variances is not None:
            return VarianceTable(self.variances, "variances table")
        if isinstance(self.loaded, VarianceTable):
            return self.loaded
        if self.loaded is not None:
            return self.loaded.variance_table(nonstationary=self.nonstationary)
        return read_variance_table(self.report, nonstationary=self.nonstationary)

    def bind(self, model) -> BoundOptimalRule:
        """Check the table against ``model`` and resolve it to the model's layers."""
        fallback = get_rule(self.fallback)
        table = self.table()
        if self.variances is not None:
            return self._bound({k: (v, "") for k, v in table.variances.items()}, fallback, table.source, model)
        config = getattr(model, "config", None)
        check_compatible(table, model, width_transfer=self.width_transfer)
        src_depth, dst_depth = table.n_layer, num_layers(config) if config is not None else None
        if self.width_transfer is not None:
            resolved = _width_table(self.width_transfer, table, model, dst_depth)
        elif src_depth and dst_depth and src_depth != dst_depth:
            if not self.allow_depth_interpolation:
                raise ReportError(
                    f"report {table.source!r} has {src_depth} layers but the model has {dst_depth}; add "
                    "',allow-depth-interpolation' to the rule spec to map layers by relative depth (or "
                    "',width-transfer=...' to map width and depth)"
                )
            resolved = interpolate_depth(table.variances, src_depth, dst_depth)
        else:
            resolved = {k: (v, "") for k, v in table.variances.items()}
        return self._bound(resolved, fallback, f"report {table.source}", model)

    def _bound(self, table: dict, fallback: InitRule, source: str, model) -> BoundOptimalRule:
        """The bound rule, its table cut to ``roles`` (refused when that leaves no tensor of the model)."""
        if self.roles is None:
            return BoundOptimalRule(table, fallback, source)
        roles = selected_roles(self.roles)
        keys = {entry.key: entry.role for entry, _ in tracked_roles(model)}
        kept = {k: v for k, v in table.items() if keys.get(k) in roles}
        if not kept:
            present = sorted({keys[k] for k in table if k in keys})
            raise RuleError(f"rule 'optimal': roles={self.roles!r} selects none of the tensors of {source} "
                            f"in this model; roles it has: {'+'.join(present) or 'none'}")
        return BoundOptimalRule(kept, fallback, f"{source}, roles {self.roles}")


def selected_roles(spec: str) -> frozenset[str]:
    """``"q+k+v"`` -> {"q", "k", "v"}; a RuleError names an unknown role and lists the known ones."""
    if not isinstance(spec, str) or not spec.strip():
        raise RuleError(f"rule 'optimal': roles={spec!r} must name tensor roles joined by '+', e.g. roles=q+k+v")
    roles = frozenset(r.strip() for r in spec.split("+"))
    unknown = sorted(roles - set(TRACKED_ROLES))
    if unknown:
        raise RuleError(f"rule 'optimal': roles={spec!r} names unknown role {unknown[0]!r}; known roles: "
                        f"{'+'.join(TRACKED_ROLES)}")
    return roles


def _width_table(mode: str, table: VarianceTable, model, dst_depth: int | None) -> dict[str, tuple[float, str]]:
    """The table's V(W) moved to ``model``'s fans (``fan-in``, ``fit`` or ``copy``) and depth."""
    if mode == "copy":
        return copy_table(table.variances, table.n_layer, dst_depth, hidden_size(table.config or {}))
    dst_fans = {entry.key: entry.fan_in for entry, _ in tracked_roles(model)}
    if mode in ("fit", "fit-pooled"):
        fit = table.transfer
        if fit is None or not fit.fits:
            widths = f" (widths {fit.widths})" if fit is not None else ""
            raise ReportError(f"report {table.source!r} holds no width fit{widths}: 'width-transfer={mode}' needs a "
                              "report of runs at >= 2 widths, made with `hf-varinit report RUN_A RUN_B ... --output "
                              "R`; or use 'width-transfer=copy' or 'width-transfer=fan-in'")
        config = getattr(model, "config", None)
        apply = fit_table if mode == "fit" else pooled_fit_table
        return apply(fit, dst_fans, dst_depth, hidden_size(config) if config is not None else None)
    src_fans = table_fans(table)
    if src_fans is None:
        raise ReportError(f"report {table.source!r}: the fans of its tensors are unknown (its model cannot be rebuilt "
                          "from the stored config), so 'width-transfer=fan-in' cannot scale them; use a report of "
                          "the model's width")
    return fan_in_table(table.variances, src_fans, dst_fans, table.n_layer, dst_depth, hidden_size(table.config))


def _check_table_types(variances: Any) -> None:
    if not isinstance(variances, Mapping):
        raise RuleError("rule 'optimal': variances must be a dict {key: V(W)}; for a file use report=<path>")
    for key, value in variances.items():
        if not isinstance(key, str) or isinstance(value, bool) or not isinstance(value, (int, float)):
            raise RuleError(f"rule 'optimal': variances[{key!r}] = {value!r}; the table maps keys (strings such as "
                            "'layers.0.q') to numbers V(W) > 0")


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


__all__ = ["BoundOptimalRule", "OptimalRule", "selected_roles"]
