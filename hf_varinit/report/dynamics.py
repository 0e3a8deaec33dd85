"""Depth dynamics of a variance record: do shallow layers' Q/K/V variances move faster than deep ones'?

For each layer and each of Q, K, V (from the ``var`` statistic):

* **early change**: |var(t_early) / var(0) - 1|, the relative change from init over the first
  ``early_fraction`` of training (t_early is the first record at or after that step);
* **half-change step**: the first recorded step at which var has covered half of its total move
  |var(T) - var(0)|.

The depth trend is the Spearman rank correlation between layer index and each metric (Q, K and V
pooled per layer by their mean). A negative correlation of early change with depth, together with a
positive one of the half-change step, means shallow layers expand quickly and deep ones change slowly.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np
from scipy.stats import spearmanr

from hf_varinit.arch import layer_key
from hf_varinit.record.stats_file import VarianceStats
from hf_varinit.report.tables import markdown_table

QKV = ("q", "k", "v")


@dataclass
class LayerDynamics:
    layer: int
    early_change: dict[str, float]
    half_change_step: dict[str, int | None]
    total_change: dict[str, float]


@dataclass
class DepthDynamics:
    """Per-layer metrics and the depth trends (Spearman rho over layers)."""

    early_step: int
    layers: list[LayerDynamics]
    rho_early_change: float | None
    rho_half_change_step: float | None
    rho_equilibration_step: float | None = None  # from the steady-state analysis, when given

    @property
    def verdict(self) -> str:
        early, half, eq = self.rho_early_change, self.rho_half_change_step, self.rho_equilibration_step
        if early is None or half is None:
            return "not enough layers or records to judge the depth trend"
        expand_first = early < -0.5  # shallow layers move more early on
        settle_later = half > 0.5 or (eq is not None and eq > 0.5)  # deep layers take longer
        if expand_first and settle_later:
            return "shallow layers change faster and deep layers settle later (agrees with the study)"
        if settle_later:
            return "deep layers settle later, but shallow layers do not expand faster early on (partly agrees)"
        if expand_first:
            return "shallow layers expand faster early on, but deep layers do not settle later (partly agrees)"
        if early > 0.5 and half < -0.5:
            return "deep layers change faster than shallow ones (disagrees with the study)"
        return "no clear depth ordering (|rho| <= 0.5)"

    def to_dict(self) -> dict:
        return {**asdict(self), "verdict": self.verdict}

    def to_markdown(self) -> str:
        """The per-layer table, then the Spearman correlations and the verdict."""
        headers = ["layer", *(f"{name} {r.upper()}" for name in ("early change", "half-change step", "var(T)/var(0)")
                              for r in QKV)]
        rows = [[d.layer, *(f"{d.early_change.get(r, float('nan')):.3g}" for r in QKV),
                 *(d.half_change_step.get(r) for r in QKV),
                 *(f"{d.total_change.get(r, float('nan')):.3g}" for r in QKV)] for d in self.layers]
        table = markdown_table([dict(enumerate(row)) for row in rows], list(range(len(headers))), headers)
        fmt = lambda x: "—" if x is None else f"{x:+.2f}"  # noqa: E731
        return (f"{table}\n\nSpearman rho(depth, early change by step {self.early_step}) = "
                f"{fmt(self.rho_early_change)}; rho(depth, half-change step) = {fmt(self.rho_half_change_step)}; "
                f"rho(depth, equilibration step) = {fmt(self.rho_equilibration_step)}. **{self.verdict}.**")


def spearman(x: np.ndarray, y: np.ndarray) -> float | None:
    """Spearman rank correlation (`scipy.stats.spearmanr`, average ranks for ties) over the pairs where both are
    finite; None with fewer than 3 pairs or a constant side."""
    x, y = np.asarray(x, dtype=float), np.asarray(y, dtype=float)
    keep = np.isfinite(x) & np.isfinite(y)
    x, y = x[keep], y[keep]
    if x.size < 3 or np.ptp(x) == 0 or np.ptp(y) == 0:
        return None
    return float(spearmanr(x, y).statistic)


def depth_dynamics(stats: VarianceStats, early_fraction: float = 0.1,
                   equilibration: dict[int, int | None] | None = None) -> DepthDynamics | None:
    """Per-layer Q/K/V dynamics and depth trends of a training record; None without Q/K/V or records.

    ``equilibration`` (layer -> equilibration step, from `steady_state.layer_equilibration`) adds its depth trend.
    """
    steps = np.asarray(stats.step)
    if len(steps) < 3:
        return None
    target = steps[0] + early_fraction * (steps[-1] - steps[0])
    early_index = int(np.searchsorted(steps, target))
    layers = []
    for layer in stats.layers():
        early, half, total = {}, {}, {}
        for role in QKV:
            key = layer_key(layer, role)
            if key not in stats.keys:
                continue
            var = stats.series(key, "var").astype(np.float64)
            v0, vt = var[0], var[-1]
            early[role] = float(abs(var[early_index] / v0 - 1)) if v0 > 0 else float("nan")
            total[role] = float(vt / v0) if v0 > 0 else float("nan")
            moved = np.abs(var - v0) >= 0.5 * abs(vt - v0)
            half[role] = int(steps[np.argmax(moved)]) if abs(vt - v0) > 0 and moved.any() else None
        if early:
            layers.append(LayerDynamics(layer, early, half, total))
    if not layers:
        return None
    depth = np.array([d.layer for d in layers], dtype=float)
    early_mean = np.array([np.nanmean(list(d.early_change.values())) for d in layers])
    half_mean = np.array([np.mean([s for s in d.half_change_step.values() if s is not None])
                          if any(s is not None for s in d.half_change_step.values()) else np.nan for d in layers])
    rho_eq = None
    if equilibration:
        eq = np.array([np.nan if equilibration.get(d.layer) is None else equilibration[d.layer] for d in layers])
        rho_eq = spearman(depth, eq)
    return DepthDynamics(int(steps[early_index]), layers, spearman(depth, early_mean), spearman(depth, half_mean),
                         rho_eq)
