"""Exploratory depth-trend statistics of Q/K/V variance: do shallow layers' variances move faster than deep ones'?

Research, not the library: the library's one settling definition is the equilibration step
(`hf_varinit.report.dynamics`, DESIGN.md "Definitions"). The statistics here are the seed study's tools; across seeds
`scripts/dynamics_seeds.py` gives their confidence intervals. All read the ``var`` statistic of Q, K and V only.

**The pre-registered depth statistic** (`depth_statistic`; chosen before looking at the multi-seed runs, and the one
to quote):

* a tensor's **settle step** (`settle_step`): the first recorded step after which
  |var(t) - var(T)| <= ``SETTLE_BAND`` x |var(T) - var(0)| holds through the end (T: the last record). The band
  is relative to the tensor's own total move, not to its level, so a tensor that grows 10x more does not look
  later; None for a tensor that did not move (`moved`);
* a layer's settle step (`layer_settle_steps`): the **median** over its q, k and v (of those that moved). The
  median, not the max: the max is the single slowest tensor (V moves latest in these runs), so a layer's value
  would be one role's and a single noisy tensor would set it; with three tensors the median is a real observed
  step that no one tensor decides;
* ``rho_settle``: Spearman rho between layer index and the layer's settle step (> 0: deep layers settle later);
* a layer's **early growth** (`layer_early_growth`): the median over q, k, v of var(t_e) / var(0) - 1 at
  t_e = the first record at or after ``EARLY_FRACTION`` of the record's last step;
* ``rho_early_growth``: Spearman rho between layer index and early growth (< 0: shallow layers expand faster early).

**Exploratory trends** (`depth_trends`, what the report card showed before the library kept only the headline):

* **early change**: |var(t_early) / var(0) - 1|, the relative change from init over the first ``early_fraction``;
* **half-change step**: the first recorded step at which var has covered half of its total move
  |var(T) - var(0)|; None for a tensor whose total move is within the noise (below);
* **moved** (`moved`): the total move stands out of the record-to-record noise,
  |var(T) - var(0)| >= ``NOISE_K`` * std(var(t_i+1) - var(t_i)). With independent noise of std s on each record,
  var(T) - var(0) of a tensor that does not move has std sqrt(2) s, as do the successive differences, so
  ``NOISE_K = 3`` lets pure noise pass as a move about 0.3 % of the time.

A trend is the Spearman rank correlation between layer index and a metric (Q, K and V pooled per layer by their
mean), with its two-sided p-value (`spearman_test`: exact up to 8 layers, else scipy's approximation). No trend is
called (`DepthTrends.refused` says why) with fewer than ``MIN_RECORDS`` records or when most Q/K/V tensors did not
move; trend by trend, not at p >= ``ALPHA`` or with fewer than 3 layers with the metric. One record gives one rho
per statistic; a claim needs the interval across seeds.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass, field

import numpy as np
from scipy.stats import rankdata, spearmanr

from hf_varinit.arch.keys import layer_key
from hf_varinit.record.stats_file import VarianceStats

__all__ = ["ALPHA", "EARLY_FRACTION", "MIN_RECORDS", "NOISE_K", "QKV", "SETTLE_BAND", "DepthStatistic", "DepthTrends",
           "LayerTrends", "depth_statistic", "depth_trends", "early_index", "layer_early_growth", "layer_settle_steps",
           "moved", "settle_step", "spearman_test"]

QKV = ("q", "k", "v")
MIN_RECORDS = 10  # fewer records: no depth trend is called
NOISE_K = 3.0  # a tensor moved when |var(T) - var(0)| >= NOISE_K * std of successive differences
ALPHA = 0.05  # a depth trend is called only at Spearman p < ALPHA
EXACT_UP_TO = 8  # exact Spearman p-values up to this many layers (8! orderings), scipy's approximation above
CLAIM = "shallow layers expand quickly and deep layers change slowly"
SETTLE_BAND = 0.1  # settled: within 10 % of the tensor's own total move from its final value, through the end
EARLY_FRACTION = 0.1  # early growth is read at the first record at or after 10 % of the record's last step


# --------------------------------------------------------------------- per series


def spearman_test(x: np.ndarray, y: np.ndarray) -> tuple[float, float] | None:
    """Spearman rank correlation and its two-sided p-value over the pairs where both are finite; None with fewer
    than 3 pairs or a constant side.

    rho is `scipy.stats.spearmanr`'s (average ranks for ties). Its p-value (a t approximation) is used from
    ``EXACT_UP_TO + 1`` pairs on; below, where the approximation breaks down (it gives p = 0 for any perfect
    ordering, even of 3 layers), the p-value is exact: the share of all orderings of ``y`` whose |rho| is at least
    the observed one.
    """
    x, y = np.asarray(x, dtype=float), np.asarray(y, dtype=float)
    keep = np.isfinite(x) & np.isfinite(y)
    x, y = x[keep], y[keep]
    if x.size < 3 or np.ptp(x) == 0 or np.ptp(y) == 0:
        return None
    result = spearmanr(x, y)
    rho = float(result.statistic)
    if x.size > EXACT_UP_TO:
        return rho, float(result.pvalue)
    rx, ry = rankdata(x) - (x.size + 1) / 2, rankdata(y) - (x.size + 1) / 2
    orderings = ry[np.array(list(itertools.permutations(range(x.size))))]  # (n!, n)
    rhos = orderings @ rx / np.sqrt((rx @ rx) * (ry @ ry))
    return rho, float(np.mean(np.abs(rhos) >= abs(rho) - 1e-12))


def moved(series: np.ndarray, k: float = NOISE_K) -> bool:
    """Whether ``|series[-1] - series[0]| >= k * std(successive differences)`` (False for fewer than 3 values)."""
    series = np.asarray(series, dtype=np.float64)
    if series.size < 3:
        return False
    change = abs(series[-1] - series[0])
    return bool(change > 0 and change >= k * np.std(np.diff(series)))


def settle_step(steps: np.ndarray, var: np.ndarray, band: float = SETTLE_BAND) -> int | None:
    """First recorded step after which ``|var(t) - var(T)| <= band * |var(T) - var(0)|`` through the end; None when
    the series did not move out of its record-to-record noise (`moved`)."""
    var = np.asarray(var, dtype=np.float64)
    if not moved(var):
        return None
    inside = np.abs(var - var[-1]) <= band * abs(var[-1] - var[0])
    outside = np.flatnonzero(~inside)
    return int(np.asarray(steps)[0 if outside.size == 0 else outside[-1] + 1])  # the last record is always inside


def early_index(steps: np.ndarray, early_fraction: float = EARLY_FRACTION) -> int:
    """Index of the first record at or after ``early_fraction`` of the way from the first to the last step."""
    steps = np.asarray(steps)
    return int(np.searchsorted(steps, steps[0] + early_fraction * (steps[-1] - steps[0])))


# --------------------------------------------------------------------- the pre-registered depth statistic


def _qkv_layers(stats: VarianceStats) -> dict[int, list[np.ndarray]]:
    """layer -> the ``var`` series of its q, k, v (those tracked)."""
    out: dict[int, list[np.ndarray]] = {}
    for layer in stats.layers():
        series = [stats.series(layer_key(layer, r), "var").astype(np.float64) for r in QKV
                  if layer_key(layer, r) in stats.keys]
        if series:
            out[layer] = series
    return out


def layer_settle_steps(stats: VarianceStats, band: float = SETTLE_BAND) -> dict[int, float]:
    """Per layer: the median settle step of its q, k, v (NaN when none of them moved)."""
    out = {}
    for layer, series in _qkv_layers(stats).items():
        steps = [s for s in (settle_step(stats.step, v, band) for v in series) if s is not None]
        out[layer] = float(np.median(steps)) if steps else float("nan")
    return out


def layer_early_growth(stats: VarianceStats, early_fraction: float = EARLY_FRACTION) -> dict[int, float]:
    """Per layer: the median over its q, k, v of ``var(t_e) / var(0) - 1`` (t_e: `early_index`)."""
    i = early_index(stats.step, early_fraction)
    return {layer: float(np.median([v[i] / v[0] - 1 if v[0] > 0 else np.nan for v in series]))
            for layer, series in _qkv_layers(stats).items()}


def _depth_test(per_layer: dict[int, float]) -> tuple[float | None, float | None]:
    test = spearman_test(np.array(list(per_layer), dtype=float), np.array(list(per_layer.values())))
    return (None, None) if test is None else test


@dataclass
class DepthStatistic:
    """The pre-registered depth statistic of one record (definitions in the module docstring)."""

    settle_step: dict[int, float]
    early_growth: dict[int, float]
    early_step: int
    rho_settle: float | None
    p_settle: float | None
    rho_early_growth: float | None
    p_early_growth: float | None
    band: float = SETTLE_BAND
    refused: str | None = None


def depth_statistic(stats: VarianceStats, band: float = SETTLE_BAND, early_fraction: float = EARLY_FRACTION
                    ) -> DepthStatistic | None:
    """The pre-registered depth statistic of ``stats`` (Q/K/V only); None without Q/K/V tensors."""
    if not _qkv_layers(stats):
        return None
    if len(stats.step) < MIN_RECORDS:
        return DepthStatistic({}, {}, 0, None, None, None, None, band,
                              refused=f"only {len(stats.step)} records; it needs at least {MIN_RECORDS}")
    settle, growth = layer_settle_steps(stats, band), layer_early_growth(stats, early_fraction)
    return DepthStatistic(settle, growth, int(stats.step[early_index(stats.step, early_fraction)]),
                          *_depth_test(settle), *_depth_test(growth), band)


# --------------------------------------------------------------------- exploratory trends


@dataclass
class LayerTrends:
    layer: int
    early_change: dict[str, float]
    half_change_step: dict[str, int | None]
    total_change: dict[str, float]
    moved: dict[str, bool] = field(default_factory=dict)


@dataclass
class DepthTrends:
    """Per-layer metrics and the depth trends (Spearman rho and p-value over layers).

    ``refused`` is set when no trend may be called at all (too few records, or changes within the noise).
    """

    early_step: int | None
    layers: list[LayerTrends]
    rho_early_change: float | None
    rho_half_change_step: float | None
    rho_equilibration_step: float | None = None  # from the steady-state analysis, when given
    p_early_change: float | None = None
    p_half_change_step: float | None = None
    p_equilibration_step: float | None = None
    records: int = 0
    refused: str | None = None

    def _sign(self, name: str) -> int:
        """+1 / -1 for a significant positive / negative depth trend of ``name``, 0 when none is called."""
        rho, p = getattr(self, f"rho_{name}"), getattr(self, f"p_{name}")
        if self.refused or rho is None or p is None or not p < ALPHA:
            return 0
        return 1 if rho > 0 else -1

    @property
    def verdict(self) -> str:
        """What the record says about the study's claim; never more than the tests above allow."""
        if self.refused:
            return f"no depth trend is called: {self.refused}"
        early = self._sign("early_change")
        settle_signs = {self._sign("half_change_step"), self._sign("equilibration_step")} - {0}
        settle = settle_signs.pop() if len(settle_signs) == 1 else 0
        if early == 0 and settle == 0:
            return f"no significant depth ordering (every Spearman p >= {ALPHA:g}, or too few layers)"
        expand = {-1: "shallow layers expand faster early on", 1: "deep layers change more early on",
                  0: "no significant depth ordering of the early change"}[early]
        later = {1: "deep layers settle later", -1: "deep layers settle earlier",
                 0: "no significant depth ordering of the settling"}[settle]
        if early == -1 and settle == 1:
            return f"{expand} and {later}: agrees with the study's claim that {CLAIM}"
        if early == 1 and settle == -1:
            return (f"deep layers change faster than shallow ones ({expand[len('deep layers '):]}, and they settle "
                    f"earlier): disagrees with the study's claim that {CLAIM}")
        halves = (("shallow layers expand quickly", early), ("deep layers change slowly", settle))
        supports = [f'"{h}"' for h, sign in halves if sign == (-1 if h.startswith("shallow") else 1)]
        against = [f'"{h}"' for h, sign in halves if sign == (1 if h.startswith("shallow") else -1)]
        silent = [f'"{h}"' for h, sign in halves if sign == 0]
        parts = ([f"supports {supports[0]}"] if supports else []) + \
                ([f"contradicts {against[0]}"] if against else []) + \
                ([f"is not significant on {silent[0]}"] if silent else [])
        kind = "partly agrees with" if supports else "disagrees with"
        return f"{expand}; {later}: {kind} the study's claim that {CLAIM} (the record {', '.join(parts)})"


def depth_trends(stats: VarianceStats, early_fraction: float = EARLY_FRACTION,
                 equilibration: dict[int, int | None] | None = None) -> DepthTrends | None:
    """Per-layer Q/K/V early change and half-change step, and their depth trends; None without Q/K/V tensors.

    Args:
        stats (`VarianceStats`): the record.
        early_fraction (`float`): the share of training that defines the early change.
        equilibration (`dict[int, int | None]`, *optional*): layer -> its Q/K/V equilibration step (from
            `hf_varinit.report.steady_state.layer_equilibration(tensors, roles=("q", "k", "v"))`); adds its trend.
    """
    steps = np.asarray(stats.step)
    qkv_layers = list(_qkv_layers(stats))
    if not qkv_layers:
        return None
    if len(steps) < MIN_RECORDS:
        return DepthTrends(None, [], None, None, records=len(steps),
                           refused=f"only {len(steps)} records; a depth trend needs at least {MIN_RECORDS}")
    t_early = early_index(steps, early_fraction)
    layers = []
    for layer in qkv_layers:
        early, half, total, move = {}, {}, {}, {}
        for role in QKV:
            key = layer_key(layer, role)
            if key not in stats.keys:
                continue
            var = stats.series(key, "var").astype(np.float64)
            v0, vt = var[0], var[-1]
            early[role] = float(abs(var[t_early] / v0 - 1)) if v0 > 0 else float("nan")
            total[role] = float(vt / v0) if v0 > 0 else float("nan")
            move[role] = moved(var)
            reached = np.abs(var - v0) >= 0.5 * abs(vt - v0)
            half[role] = int(steps[np.argmax(reached)]) if move[role] and reached.any() else None
        layers.append(LayerTrends(layer, early, half, total, move))
    n_still = sum(not m for d in layers for m in d.moved.values())
    n_all = sum(len(d.moved) for d in layers)
    refused = None
    if 2 * n_still > n_all:
        refused = (f"the total change of {n_still} of {n_all} Q/K/V tensors is within the record-to-record noise "
                   f"(|var(T) - var(0)| < {NOISE_K:g} x the std of successive differences)")
    depth = np.array([d.layer for d in layers], dtype=float)
    early_mean = np.array([np.nanmean(list(d.early_change.values())) for d in layers])
    half_mean = np.array([np.mean([s for s in d.half_change_step.values() if s is not None])
                          if any(s is not None for s in d.half_change_step.values()) else np.nan for d in layers])
    eq_test: tuple[float | None, float | None] = (None, None)
    if equilibration:
        eq = np.array([np.nan if equilibration.get(d.layer) is None else equilibration[d.layer] for d in layers])
        eq_test = spearman_test(depth, eq) or (None, None)
    early_test = spearman_test(depth, early_mean) or (None, None)
    half_test = spearman_test(depth, half_mean) or (None, None)
    return DepthTrends(int(steps[t_early]), layers, early_test[0], half_test[0], eq_test[0],
                       early_test[1], half_test[1], eq_test[1], records=len(steps), refused=refused)
