"""The optimal-variance rule: initialise every tracked tensor with s0^2 = V(W), its steady-state second moment.

V(W) comes from a variance report (``optimal:report=<folder | file | hub id>``) or from a table
passed in Python (``{"name": "optimal", "variances": {"layers.0.q": 4e-3, ...}}``). Tensors the table
lacks use the ``fallback`` rule. A report is checked against the model by the shapes of the tracked tensors (the
report's own model is rebuilt on the meta device from its stored config): another architecture or tensor shape is
refused, naming the first mismatching tensor; a report of another depth is mapped by relative depth only with
``allow-depth-interpolation``; one of another width only with ``width-transfer=fan-in`` (V(W) scaled by
fan_in(source) / fan_in(target)) or ``width-transfer=fit`` (the power law of a multi-run report), which also allows
the depth mapping (width first, on the source's layers, then depth: `hf_varinit.report.transfer`). `from_report`
builds the report's own architecture and initialises it.
"""

from __future__ import annotations

import math
import os
import reprlib
from collections.abc import Mapping
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any, ClassVar

from transformers import PretrainedConfig, PreTrainedModel

from hf_varinit.arch import config_from_dict, hidden_size, num_layers
from hf_varinit.errors import ConfigError, HFVarInitError, ReportError, RuleError
from hf_varinit.init.patch import from_config
from hf_varinit.init.roles import TRACKED_ROLES, TensorRole, tracked_roles
from hf_varinit.init.rules import Init, InitRule, ModelContext, _check_choice, get_rule, register_rule
from hf_varinit.report import transfer
from hf_varinit.report.compatibility import check_compatible, report_fans, report_shapes
from hf_varinit.report.report import VarianceReport
from hf_varinit.report.transfer import WIDTH_TRANSFERS, fan_in_table, fit_table, interpolate_depth


def _load_report(source: str) -> VarianceReport:
    """Load a report, cached on the source and the modification time of its files (a rewritten report reloads)."""
    path = Path(source)
    try:
        stamp = tuple(sorted((p.name, p.stat().st_mtime_ns) for p in path.iterdir() if p.is_file())) \
            if path.is_dir() else (path.stat().st_mtime_ns if path.exists() else None)
        return _load_report_cached(source, stamp)
    except OSError as exc:  # unreadable, or a name the system refuses
        raise ReportError(f"report {reprlib.repr(source)} cannot be read: {exc.strerror or exc}; give a report "
                          "folder, a steady_state.json / variance.safetensors file, or a hub id") from None


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


@dataclass(frozen=True)
class OptimalRule(InitRule):
    """s0^2 = V(W) per tracked tensor / Q/K/V slice, from a report or a variance table.

    Args:
        report: a report folder, a ``steady_state.json`` / ``variance.safetensors`` file, or a hub id.
        variances: key -> V(W) (keys as in `init_plan`'s ``key`` column, e.g. ``layers.3.q``).
        loaded: a `VarianceReport` already in memory (instead of ``report``).
        fallback: the rule for tensors the report lacks (default ``kaiming``).
        allow_depth_interpolation: map a report of another depth by relative depth.
        width_transfer: map a report of another width: ``fan-in`` (V(W) * fan_in source / fan_in target) or
            ``fit`` (V(W) = c * fan_in^-alpha fitted by ``hf-varinit report RUN_A RUN_B ...``); also maps depth.
        nonstationary: what to do with tensors the report marks not stationary: ``last`` (use the last
            recorded value, noted in the plan), ``skip`` (use the fallback) or ``error``.
        roles: only tensors of these roles take V(W), joined by ``+`` (``q+k+v``; ``embedding+position+attn_out+
            mlp_out``); the others use the fallback. For ablations: which tensors carry a gain?
    """

    name: ClassVar[str] = "optimal"
    report: str | os.PathLike | None = None
    variances: dict | None = field(default=None, metadata={"spec": False}, hash=False, compare=False)
    loaded: VarianceReport | None = field(default=None, metadata={"spec": False}, hash=False, compare=False)
    fallback: str = "kaiming"
    allow_depth_interpolation: bool = False
    nonstationary: str = "last"
    width_transfer: str | None = None
    roles: str | None = None

    def __post_init__(self):
        if isinstance(self.report, os.PathLike):
            object.__setattr__(self, "report", os.fspath(self.report))
        if self.report is not None and (not isinstance(self.report, str) or not self.report.strip()):
            raise RuleError(f"rule 'optimal': report={self.report!r} must be a folder, a file or a hub id (a "
                            "non-empty string), e.g. 'optimal:report=model_cards/gpt2-12l-tiny-kaiming'")
        if self.loaded is not None and not isinstance(self.loaded, VarianceReport):
            raise RuleError(f"rule 'optimal': loaded={self.loaded!r} must be a VarianceReport; for a folder, a file "
                            "or a hub id use report=<...>")
        if sum(x is not None for x in (self.report, self.variances, self.loaded)) != 1:
            raise RuleError(
                "rule 'optimal' needs exactly one of report=<folder | file | hub id> or variances={key: V(W)}; "
                "e.g. 'optimal:report=model_cards/gpt2-12l-tiny-kaiming'"
            )
        if not isinstance(self.fallback, str) or get_rule(self.fallback).name == "optimal":
            raise RuleError(f"rule 'optimal': fallback={self.fallback!r} must name another rule, e.g. kaiming")
        if not isinstance(self.allow_depth_interpolation, bool):
            raise RuleError(f"rule 'optimal': allow_depth_interpolation={self.allow_depth_interpolation!r} must be "
                            "true or false")
        _check_choice(self.name, "nonstationary", self.nonstationary, ("last", "skip", "error"))
        if self.width_transfer is not None:
            _check_choice(self.name, "width_transfer", self.width_transfer, WIDTH_TRANSFERS)
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
        return f"optimal:report={self.loaded.origin or '<in-memory report>'}" + (f",{rest}" if rest else "")

    def weight_init(self, entry, ctx):
        raise RuleError("rule 'optimal' must be bound to a model first: call rule.bind(model), or use "
                        "from_config / apply_init / init_plan, which bind it")

    def bind(self, model) -> BoundOptimalRule:
        """Check the report against ``model`` and resolve its table to the model's layers."""
        fallback = get_rule(self.fallback)
        if self.variances is not None:
            table = {k: (v, "") for k, v in check_variances(self.variances, "variances").items()}
            return self._bound(table, fallback, "variances table", model)
        report = self.loaded if self.loaded is not None else _load_report(self.report)
        source = self.report or report.origin or "in-memory report"
        variances = check_variances(report.variances(nonstationary=self.nonstationary), source)
        config = getattr(model, "config", None)
        check_compatible(report, model, source, width_transfer=self.width_transfer)
        src_depth, dst_depth = report.n_layer, num_layers(config) if config is not None else None
        if self.width_transfer is not None:
            table = _width_table(self.width_transfer, report, variances, model, source, dst_depth)
        elif src_depth and dst_depth and src_depth != dst_depth:
            if not self.allow_depth_interpolation:
                raise ReportError(
                    f"report {source!r} has {src_depth} layers but the model has {dst_depth}; add "
                    "',allow-depth-interpolation' to the rule spec to map layers by relative depth (or "
                    "',width-transfer=...' to map width and depth)"
                )
            table = interpolate_depth(variances, src_depth, dst_depth)
        else:
            table = {k: (v, "") for k, v in variances.items()}
        return self._bound(table, fallback, f"report {source}", model)

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


def _width_table(mode: str, report: VarianceReport, variances: dict[str, float], model, source: str,
                 dst_depth: int | None) -> dict[str, tuple[float, str]]:
    """The report's V(W) moved to ``model``'s fans (``fan-in`` or ``fit``) and depth."""
    dst_fans = {entry.key: entry.fan_in for entry, _ in tracked_roles(model)}
    if mode == "fit":
        fit = report.transfer
        if fit is None or not fit.fits:
            widths = f" (widths {fit.widths})" if fit is not None else ""
            raise ReportError(f"report {source!r} holds no width fit{widths}: 'width-transfer=fit' needs a report of "
                              "runs at >= 2 widths, made with `hf-varinit report RUN_A RUN_B ... --output R`; or use "
                              "'width-transfer=fan-in'")
        config = getattr(model, "config", None)
        return fit_table(fit, dst_fans, dst_depth, hidden_size(config) if config is not None else None)
    src_fans = report_fans(report)
    if src_fans is None:
        raise ReportError(f"report {source!r}: the fans of its tensors are unknown (its model cannot be rebuilt from "
                          "the stored config), so 'width-transfer=fan-in' cannot scale them; use a report of the "
                          "model's width")
    return fan_in_table(variances, src_fans, dst_fans, report.n_layer, dst_depth, hidden_size(report.config))


def _check_table_types(variances: Any) -> None:
    if not isinstance(variances, Mapping):
        raise RuleError("rule 'optimal': variances must be a dict {key: V(W)}; for a file use report=<path>")
    for key, value in variances.items():
        if not isinstance(key, str) or isinstance(value, bool) or not isinstance(value, (int, float)):
            raise RuleError(f"rule 'optimal': variances[{key!r}] = {value!r}; the table maps keys (strings such as "
                            "'layers.0.q') to numbers V(W) > 0")


def report_config(report: VarianceReport | str | os.PathLike[str], **overrides: Any) -> PretrainedConfig:
    """The config of the model a report was measured on (its stored config), ``overrides`` applied.

    Raises:
        ReportError: the report cannot be loaded or keeps no model config. ConfigError: an unknown override.
    """
    loaded = _loaded(report)
    if "model_type" in overrides:
        raise ConfigError(f"model_type cannot be overridden (the report was measured on {loaded.model_type!r}); "
                          "override config entries such as the depth, or build another model with hv.from_config")
    if not loaded.config or loaded.model_type == "unknown":
        raise ReportError(f"{loaded.source_description} keeps no model config, so its architecture is unknown; "
                          "build the model yourself and use hv.from_config(config, rule='optimal:report=...')")
    return config_from_dict(loaded.model_type, loaded.config, **overrides)


def from_report(
    report: VarianceReport | str | os.PathLike[str], seed: int | None = None, **config_overrides: Any
) -> PreTrainedModel:
    """A model with the report's architecture (its stored config), initialised from it with s0^2 = V(W).

    Args:
        report (`VarianceReport`, `str` or `os.PathLike`): a report, or a report folder, a ``steady_state.json`` /
            ``variance.safetensors`` file, or a hub id.
        seed (`int`, *optional*): makes the weights deterministic.
        config_overrides: config entries to change, under the config's own names (e.g. ``vocab_size=...``). A
            changed depth maps V(W) by relative depth; a changed width or tensor shape is refused.

    Raises:
        ReportError: the report cannot be loaded, keeps no model config, or does not fit the overridden config.
        ConfigError: an override the config does not have.

    Example:
        >>> model = hv.from_report("model_cards/gpt2-12l-tiny-kaiming", seed=0)  # doctest: +SKIP
    """
    loaded = _loaded(report)
    rule = {"loaded": report} if isinstance(report, VarianceReport) else {"report": os.fspath(report)}
    config = report_config(loaded, **config_overrides)
    depth = num_layers(config)
    if depth is not None and (isinstance(depth, bool) or not isinstance(depth, int) or depth < 1):
        raise ConfigError(f"from_report: a depth of {depth!r} layers is invalid; give a positive number of layers")
    depth_changed = loaded.n_layer is not None and depth != loaded.n_layer
    rule = OptimalRule(**rule, allow_depth_interpolation=depth_changed)
    try:
        return from_config(config, rule, seed=seed)
    except ValueError as exc:  # the model refuses the overridden config (e.g. a width its heads do not divide)
        if isinstance(exc, HFVarInitError) or not config_overrides:
            raise
        raise ConfigError(f"from_report: the report's model with {config_overrides} cannot be built: {exc}") from None


def combine_reports(reports: list[VarianceReport]) -> VarianceReport:
    """One report from runs of one model type at several widths and/or depths: the widest (then deepest) run's
    report, with `VarianceReport.transfer` holding the runs and, with >= 2 widths, V(W) = c * fan_in^-alpha per key.

    Raises:
        ReportError: fewer than two runs, another model type or config entry than width / depth, another recipe.
    """
    if len(reports) < 2:
        raise ReportError("a multi-run report needs >= 2 runs; for one run use `hf-varinit report RUN`")
    runs = []
    for r in reports:
        fans = report_fans(r)
        if fans is None:
            raise ReportError(f"{r.source_description}: its model cannot be rebuilt from the stored config, so the "
                              "fans of its tensors are unknown")
        runs.append({"source": r.origin or "in-memory report", "model_type": r.model_type, "config": r.config,
                     "recipe": r.recipe, "width": hidden_size(r.config) or 0, "n_layer": r.n_layer,
                     "variances": r.variances(), "fans": fans})
    transfer.check_combinable(runs)
    base = max(range(len(runs)), key=lambda i: (runs[i]["width"], runs[i]["n_layer"] or 0))
    reports[base].transfer = transfer.fit_runs(runs)
    return reports[base]


def recipe_mismatch(report: VarianceReport, optimizer: str | None = None, lr: float | None = None) -> str | None:
    """A note when the run to initialise uses another optimizer (or lr) than the one ``report`` was measured under;
    None when they agree or the report does not say."""
    return transfer.recipe_note(report.recipe, optimizer, lr)


def spec_recipe_note(rule: Any, optimizer: str | None = None, lr: float | None = None) -> str | None:
    """`recipe_mismatch` for a rule spec: the note when ``rule`` reads a report measured under another optimizer or
    lr, else None (also for rules that read no report)."""
    rule = get_rule(rule)
    if not isinstance(rule, OptimalRule) or rule.variances is not None:
        return None
    return recipe_mismatch(rule.loaded if rule.loaded is not None else _load_report(rule.report), optimizer, lr)


def _loaded(report: Any) -> VarianceReport:
    """``report`` loaded (a `VarianceReport` is used as is); a ReportError for anything that is not a source."""
    if isinstance(report, VarianceReport):
        return report
    if not isinstance(report, (str, os.PathLike)):
        raise ReportError(f"report={reprlib.repr(report)} is not a report: give a VarianceReport, a report folder, a "
                          "steady_state.json / variance.safetensors file, or a hub id")
    return _load_report(os.fspath(report))


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

__all__ = ["BoundOptimalRule", "OptimalRule", "check_compatible", "combine_reports", "from_report",
           "interpolate_depth", "recipe_mismatch", "report_config", "report_fans", "report_shapes", "selected_roles",
           "spec_recipe_note"]
