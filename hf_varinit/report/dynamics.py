"""Depth dynamics of a variance record: do shallow layers' Q/K/V variances move faster than deep ones'?

For each layer and each of Q, K, V (from the ``var`` statistic):

* **early change**: |var(t_early) / var(0) - 1|, the relative change from init over the first
  ``early_fraction`` of training (t_early is the first record at or after that step);
* **half-change step**: the first recorded step at which var has covered half of its total move
  |var(T) - var(0)|; None for a tensor whose total move is within the noise (below);
* **moved**: whether the total move stands out of the record-to-record noise,
  |var(T) - var(0)| >= ``NOISE_K`` * std(var(t_i+1) - var(t_i)). With independent noise of std s on each
  record, var(T) - var(0) of a tensor that does not move has std sqrt(2) s, as do the successive
  differences, so ``NOISE_K = 3`` lets pure noise pass as a move about 0.3 % of the time.

The depth trend of a metric is the Spearman rank correlation between layer index and the metric (Q, K and V
pooled per layer by their mean), with its two-sided p-value (exact up to 8 layers, else `scipy.stats.spearmanr`'s
approximation; see `spearman_test`). No trend is called
(`DepthDynamics.refused` says why) when:

* there are fewer than ``MIN_RECORDS`` records;
* most Q/K/V tensors did not move (their total change is within the record-to-record noise);
* or, trend by trend, the Spearman test is not significant (p >= ``ALPHA``) or fewer than 3 layers have the metric.

The study's claim is that shallow layers expand quickly and deep layers change slowly: a significant negative
correlation of early change with depth, and a significant positive one of the half-change (or equilibration)
step.

**The pre-registered depth statistic** (`depth_statistic`; chosen before looking at the multi-seed runs, and
the one to quote; the trends above are exploratory). Q, K and V tensors only, from the ``var`` statistic:

* a tensor's **settle step** (`settle_step`): the first recorded step after which
  |var(t) - var(T)| <= ``SETTLE_BAND`` x |var(T) - var(0)| holds through the end (T: the last record). The band
  is relative to the tensor's own total move, not to its level, so a tensor that grows 10x more does not look
  later; None for a tensor that did not move (`moved`);
* a layer's settle step (`layer_settle_steps`): the **median** over its q, k and v (of those that moved). The
  median, not the max: the max is the single slowest tensor (V moves latest in these runs), so a layer's value
  would be one role's and a single noisy tensor would set it; with three tensors the median is a real observed
  step that no one tensor decides;
* ``rho_settle`` (`depth_settle_rho`): Spearman rho between layer index and the layer's settle step
  (> 0: deep layers settle later);
* a layer's **early growth** (`layer_early_growth`): the median over q, k, v of var(t_e) / var(0) - 1 at
  t_e = the first record at or after ``EARLY_FRACTION`` of the record's last step;
* ``rho_early_growth`` (`depth_early_growth_rho`): Spearman rho between layer index and early growth
  (< 0: shallow layers expand faster early).

One record gives one rho per statistic; a claim needs the CI across seeds (``scripts/dynamics_seeds.py``).
"""

from __future__ import annotations

import itertools
from dataclasses import asdict, dataclass, field

import numpy as np
from scipy.stats import rankdata, spearmanr

from hf_varinit.arch import layer_key
from hf_varinit.record.stats_file import VarianceStats
from hf_varinit.report.tables import markdown_table

__all__ = ["ALPHA", "EARLY_FRACTION", "MIN_RECORDS", "NOISE_K", "SETTLE_BAND", "DepthDynamics", "DepthStatistic",
           "LayerDynamics", "depth_dynamics", "depth_early_growth_rho", "depth_settle_rho", "depth_statistic",
           "layer_early_growth", "layer_settle_steps", "moved", "settle_step", "spearman", "spearman_test"]

QKV = ("q", "k", "v")
MIN_RECORDS = 10  # fewer records: no depth trend is called
NOISE_K = 3.0  # a tensor moved when |var(T) - var(0)| >= NOISE_K * std of successive differences
ALPHA = 0.05  # a depth trend is called only at Spearman p < ALPHA
EXACT_UP_TO = 8  # exact Spearman p-values up to this many layers (8! orderings), scipy's approximation above
CLAIM = "shallow layers expand quickly and deep layers change slowly"
SETTLE_BAND = 0.1  # settled: within 10 % of the tensor's own total move from its final value, through the end
EARLY_FRACTION = 0.1  # early growth is read at the first record at or after 10 % of the record's last step


@dataclass
class LayerDynamics:
    layer: int
    early_change: dict[str, float]
    half_change_step: dict[str, int | None]
    total_change: dict[str, float]
    moved: dict[str, bool] = field(default_factory=dict)


@dataclass
class DepthDynamics:
    """Per-layer metrics and the depth trends (Spearman rho and p-value over layers).

    ``refused`` is set when no trend may be called at all (too few records, or changes within the noise).
    """

    early_step: int | None
    layers: list[LayerDynamics]
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

    def to_dict(self) -> dict:
        return {**asdict(self), "verdict": self.verdict}

    def to_markdown(self) -> str:
        """The per-layer table, then the Spearman correlations with their p-values, and the verdict."""
        if not self.layers:
            return f"**{self.verdict}.**"
        headers = ["layer", *(f"{name} {r.upper()}" for name in ("early change", "half-change step", "var(T)/var(0)")
                              for r in QKV)]
        rows = [[d.layer, *(f"{d.early_change.get(r, float('nan')):.3g}" for r in QKV),
                 *(d.half_change_step.get(r) for r in QKV),
                 *(f"{d.total_change.get(r, float('nan')):.3g}" for r in QKV)] for d in self.layers]
        table = markdown_table([dict(enumerate(row)) for row in rows], list(range(len(headers))), headers)

        def trend(name: str, what: str) -> str:
            rho, p = getattr(self, f"rho_{name}"), getattr(self, f"p_{name}")
            if rho is None:
                return f"rho(depth, {what}) = — (fewer than 3 layers with a value, or a constant side)"
            called = "" if p is not None and p < ALPHA else ", not significant"
            return f"rho(depth, {what}) = {rho:+.2f} (p = {p:.2g}{called})"

        early = f"early change by step {self.early_step}"
        lines = [trend("early_change", early), trend("half_change_step", "half-change step")]
        if self.rho_equilibration_step is not None or self.p_equilibration_step is not None:
            lines.append(trend("equilibration_step", "Q/K/V equilibration step"))
        within = sum(not m for d in self.layers for m in d.moved.values())
        noise = (f" {within} Q/K/V tensor(s) moved within the record-to-record noise (no half-change step)."
                 if within else "")
        return f"{table}\n\nSpearman {'; '.join(lines)}.{noise} **{self.verdict}.**"


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


def spearman(x: np.ndarray, y: np.ndarray) -> float | None:
    """Spearman rank correlation (see `spearman_test`); None with fewer than 3 pairs or a constant side."""
    test = spearman_test(x, y)
    return None if test is None else test[0]


def moved(series: np.ndarray, k: float = NOISE_K) -> bool:
    """Whether ``|series[-1] - series[0]| >= k * std(successive differences)`` (False for fewer than 3 values)."""
    series = np.asarray(series, dtype=np.float64)
    if series.size < 3:
        return False
    change = abs(series[-1] - series[0])
    return bool(change > 0 and change >= k * np.std(np.diff(series)))


def depth_dynamics(stats: VarianceStats, early_fraction: float = 0.1,
                   equilibration: dict[int, int | None] | None = None) -> DepthDynamics | None:
    """Per-layer Q/K/V dynamics and depth trends of a training record; None without Q/K/V tensors.

    Args:
        stats (`VarianceStats`): the record.
        early_fraction (`float`): the share of training that defines the early change.
        equilibration (`dict[int, int | None]`, *optional*): layer -> its Q/K/V equilibration step (from
            `steady_state.layer_equilibration(tensors, roles=("q", "k", "v"))`); adds its depth trend.
    """
    steps = np.asarray(stats.step)
    qkv_layers = [layer for layer in stats.layers() if any(layer_key(layer, r) in stats.keys for r in QKV)]
    if not qkv_layers:
        return None
    if len(steps) < MIN_RECORDS:
        return DepthDynamics(None, [], None, None, records=len(steps),
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
        layers.append(LayerDynamics(layer, early, half, total, move))
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
    eq_test = None
    if equilibration:
        eq = np.array([np.nan if equilibration.get(d.layer) is None else equilibration[d.layer] for d in layers])
        eq_test = spearman_test(depth, eq)
    early_test, half_test = spearman_test(depth, early_mean), spearman_test(depth, half_mean)
    rho = lambda t: None if t is None else t[0]  # noqa: E731
    p = lambda t: None if t is None else t[1]  # noqa: E731
    return DepthDynamics(int(steps[t_early]), layers, rho(early_test), rho(half_test), rho(eq_test),
                         p(early_test), p(half_test), p(eq_test), records=len(steps), refused=refused)


# --------------------------------------------------------------------- the pre-registered depth statistic


def settle_step(steps: np.ndarray, var: np.ndarray, band: float = SETTLE_BAND) -> int | None:
    """First recorded step after which ``|var(t) - var(T)| <= band * |var(T) - var(0)|`` through the end; None when
    the series did not move out of its record-to-record noise (`moved`)."""
    var = np.asarray(var, dtype=np.float64)
    if not moved(var):
        return None
    inside = np.abs(var - var[-1]) <= band * abs(var[-1] - var[0])
    outside = np.flatnonzero(~inside)
    return int(np.asarray(steps)[0 if outside.size == 0 else outside[-1] + 1])  # the last record is always inside


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


def early_index(steps: np.ndarray, early_fraction: float = EARLY_FRACTION) -> int:
    """Index of the first record at or after ``early_fraction`` of the way from the first to the last step."""
    steps = np.asarray(steps)
    return int(np.searchsorted(steps, steps[0] + early_fraction * (steps[-1] - steps[0])))


def layer_early_growth(stats: VarianceStats, early_fraction: float = EARLY_FRACTION) -> dict[int, float]:
    """Per layer: the median over its q, k, v of ``var(t_e) / var(0) - 1`` (t_e: `early_index`)."""
    i = early_index(stats.step, early_fraction)
    return {layer: float(np.median([v[i] / v[0] - 1 if v[0] > 0 else np.nan for v in series]))
            for layer, series in _qkv_layers(stats).items()}


def _rho(per_layer: dict[int, float]) -> tuple[float, float] | None:
    return spearman_test(np.array(list(per_layer), dtype=float), np.array(list(per_layer.values())))


def depth_settle_rho(stats: VarianceStats, band: float = SETTLE_BAND) -> tuple[float, float] | None:
    """Spearman (rho, p) of layer index vs `layer_settle_steps`; None with fewer than 3 layers with a value."""
    return _rho(layer_settle_steps(stats, band))


def depth_early_growth_rho(stats: VarianceStats, early_fraction: float = EARLY_FRACTION
                           ) -> tuple[float, float] | None:
    """Spearman (rho, p) of layer index vs `layer_early_growth`; None with fewer than 3 layers with a value."""
    return _rho(layer_early_growth(stats, early_fraction))


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

    def to_dict(self) -> dict:
        return asdict(self)

    def to_markdown(self) -> str:
        """The per-layer values and both rhos, with what this one record does and does not say."""
        if self.refused:
            return f"Pre-registered depth statistic: not computed ({self.refused})."
        rows = [{"layer": layer, "settle": self.settle_step[layer], "growth": self.early_growth.get(layer)}
                for layer in self.settle_step]
        table = markdown_table(rows, ["layer", "settle", "growth"],
                               ["layer", f"settle step (median of Q/K/V, band ±{self.band:g} of own move)",
                                f"early growth var(t)/var(0) − 1 at step {self.early_step} (median of Q/K/V)"])

        def line(rho: float | None, p: float | None, what: str, sign: int, claim: str) -> str:
            if rho is None:
                return f"rho(depth, {what}) = — (fewer than 3 layers with a value)"
            called = p is not None and p < ALPHA and (rho > 0) == (sign > 0)
            return f"rho(depth, {what}) = {rho:+.2f} (p = {p:.2g}): {claim} {'yes' if called else 'not shown'}"

        lines = [line(self.rho_settle, self.p_settle, "settle step", 1, "deep layers settle later:"),
                 line(self.rho_early_growth, self.p_early_growth, f"early growth at step {self.early_step}", -1,
                      "shallow layers expand faster early:")]
        return (f"{table}\n\n" + "; ".join(lines) + ". One record (one seed): the claim needs the CI across seeds "
                "(`scripts/dynamics_seeds.py`).")


def depth_statistic(stats: VarianceStats, band: float = SETTLE_BAND, early_fraction: float = EARLY_FRACTION
                    ) -> DepthStatistic | None:
    """The pre-registered depth statistic of ``stats`` (Q/K/V only); None without Q/K/V tensors."""
    if not _qkv_layers(stats):
        return None
    if len(stats.step) < MIN_RECORDS:
        return DepthStatistic({}, {}, 0, None, None, None, None, band,
                              refused=f"only {len(stats.step)} records; it needs at least {MIN_RECORDS}")
    settle, growth = layer_settle_steps(stats, band), layer_early_growth(stats, early_fraction)
    s, g = _rho(settle), _rho(growth)
    return DepthStatistic(settle, growth, int(stats.step[early_index(stats.step, early_fraction)]),
                          None if s is None else s[0], None if s is None else s[1],
                          None if g is None else g[0], None if g is None else g[1], band)
