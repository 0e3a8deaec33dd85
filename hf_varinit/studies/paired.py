"""Seed statistics of the MLP studies: bootstrap CIs of a mean and paired tests on per-seed differences.

Arms of one study share each seed's batch order (and, where the rules differ only in scale, the init noise), so
arm-vs-reference differences are paired by seed: the paired t-test and the Wilcoxon signed-rank test run on the
per-seed differences, with a bootstrap 95 % CI of their mean.

Example:
    >>> paired_test([1.0, 2.0, 3.0, 4.0], [1.5, 2.4, 3.6, 4.3])["mean_diff"]
    0.45
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
from scipy import stats as scipy_stats

__all__ = ["BOOTSTRAP_SAMPLES", "bootstrap_ci", "paired_test", "t_interval"]

BOOTSTRAP_SAMPLES = 10_000


def bootstrap_ci(values: Sequence[float], level: float = 0.95, seed: int = 0) -> tuple[float | None, float | None]:
    """Percentile bootstrap CI of the mean of ``values`` (None, None for fewer than 2 finite values)."""
    vals = np.asarray([v for v in values if v is not None and math.isfinite(v)], dtype=float)
    if len(vals) < 2:
        return None, None
    rng = np.random.default_rng(seed)
    means = vals[rng.integers(0, len(vals), size=(BOOTSTRAP_SAMPLES, len(vals)))].mean(axis=1)
    tail = (1 - level) / 2 * 100
    lo, hi = np.percentile(means, [tail, 100 - tail])
    return float(lo), float(hi)


def t_interval(values: Sequence[float | None], level: float = 0.95) -> tuple[float | None, float | None]:
    """Mean +- the Student-t half-width at ``level`` over the finite ``values`` (None, None for fewer than two)."""
    x = np.asarray([v for v in values if v is not None and math.isfinite(v)], dtype=float)
    if len(x) < 2:
        return None, None
    half = scipy_stats.t.ppf(0.5 + level / 2, len(x) - 1) * x.std(ddof=1) / math.sqrt(len(x))
    return float(x.mean() - half), float(x.mean() + half)


def paired_test(reference: Sequence[float | None], other: Sequence[float | None]) -> dict:
    """``other - reference`` per seed: mean difference, its bootstrap 95 % CI, paired t and Wilcoxon p-values.

    Pairs with a missing or non-finite value on either side are dropped (``n`` counts the pairs kept). A test
    that cannot run (fewer than 2 pairs, or all differences zero) gives p = None (Wilcoxon) or 1.0 (t, all zero).
    """
    pairs = [(a, b) for a, b in zip(reference, other)
             if a is not None and b is not None and math.isfinite(a) and math.isfinite(b)]
    diffs = np.asarray([b - a for a, b in pairs], dtype=float)
    out: dict = {"n": len(diffs), "mean_diff": None, "ci_lo": None, "ci_hi": None, "t_p": None, "wilcoxon_p": None}
    if not len(diffs):
        return out
    out["mean_diff"] = float(round(diffs.mean(), 12))
    out["ci_lo"], out["ci_hi"] = bootstrap_ci(diffs)
    if len(diffs) < 2:
        return out
    if np.all(diffs == 0):
        out["t_p"] = 1.0
        return out
    out["t_p"] = float(scipy_stats.ttest_1samp(diffs, 0.0).pvalue) if diffs.std() > 0 else 0.0
    if np.any(diffs != 0):
        out["wilcoxon_p"] = float(scipy_stats.wilcoxon(diffs).pvalue)
    return out
