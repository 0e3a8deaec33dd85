"""The statistics of the init studies over seeds, held once: the LM study (`hf_varinit.train.lm_study`) and the
lab's MLP studies use these and nothing else.

Conventions, everywhere:

* the spread over seeds is the **sample** standard deviation, ``ddof = 1`` (`DDOF`); one value has no spread (None);
* a missing value (None or NaN: a run that never got there) is left out; an infinite one (a diverged run) makes a
  mean infinite (`mean_std`) and is left out of a test or interval, which need finite values;
* intervals are two-sided at ``level`` (95 % by default); paired designs (the arms of a seed share its data order)
  get paired tests on the per-seed differences.

Example:
    >>> mean_std([1.0, 2.0, 3.0])
    (2.0, 1.0)
    >>> pm(2.0, 1.0)
    '2 ± 1'
    >>> paired_test([1.0, 2.0, 3.0, 4.0], [1.5, 2.4, 3.6, 4.3])["mean_diff"]
    0.45
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import numpy as np
from scipy import stats as scipy_stats

from hf_varinit.report.tables import format_cell

__all__ = ["BOOTSTRAP_SAMPLES", "DDOF", "LEVEL", "bootstrap_ci", "finite", "mean_std", "paired_test", "pm",
           "t_interval", "welch"]

DDOF = 1  # sample standard deviation over seeds
LEVEL = 0.95  # two-sided intervals
BOOTSTRAP_SAMPLES = 10_000

Values = Sequence[float | None] | np.ndarray


def finite(values: Values) -> np.ndarray:
    """The finite values of ``values`` as a float array (None, NaN and ±inf left out)."""
    x = np.asarray([np.nan if v is None else v for v in values], dtype=float)
    return x[np.isfinite(x)]


def mean_std(values: Values) -> tuple[float | None, float | None]:
    """Mean and sample std (ddof 1) over seeds.

    None and NaN are missing and left out; an infinite value (a diverged seed) makes the mean ``inf`` and the std
    None. ``(None, None)`` without values; the std is None for one value.
    """
    x = np.asarray([v for v in values if v is not None and not (isinstance(v, float) and math.isnan(v))],
                   dtype=float)
    if not len(x):
        return None, None
    if not np.all(np.isfinite(x)):
        return math.inf, None
    return float(x.mean()), float(x.std(ddof=DDOF)) if len(x) > 1 else None


def pm(mean: float | None, std: float | None, digits: int = 4) -> str:
    """``mean ± std`` as a table cell (``digits`` significant digits for the mean, 2 for the std); the mean alone
    when there is no finite std; ``—`` when there is no mean."""
    if mean is None or (isinstance(mean, float) and math.isnan(mean)):
        return "—"
    text = format_cell(float(mean), digits)
    return text if std is None or not math.isfinite(std) else f"{text} ± {format_cell(float(std), 2)}"


def t_interval(values: Values, level: float = LEVEL) -> tuple[float | None, float | None]:
    """Mean ± the Student-t half-width ``t(1 - (1 - level) / 2, n - 1) · sd / sqrt(n)`` (sd with ddof 1) over the
    finite ``values``; ``(None, None)`` for fewer than two."""
    x = finite(values)
    if len(x) < 2:
        return None, None
    half = scipy_stats.t.ppf(0.5 + level / 2, len(x) - 1) * x.std(ddof=DDOF) / math.sqrt(len(x))
    return float(x.mean() - half), float(x.mean() + half)


def bootstrap_ci(values: Values, level: float = LEVEL, seed: int = 0) -> tuple[float | None, float | None]:
    """Percentile bootstrap CI of the mean of the finite ``values`` (`BOOTSTRAP_SAMPLES` resamples, seeded);
    ``(None, None)`` for fewer than two."""
    x = finite(values)
    if len(x) < 2:
        return None, None
    rng = np.random.default_rng(seed)
    means = x[rng.integers(0, len(x), size=(BOOTSTRAP_SAMPLES, len(x)))].mean(axis=1)
    tail = (1 - level) / 2 * 100
    lo, hi = np.percentile(means, [tail, 100 - tail])
    return float(lo), float(hi)


def welch(baseline: Values, other: Values, level: float = LEVEL) -> dict[str, float | None]:
    """Welch's t-test of ``other`` against ``baseline`` (unequal variances, two independent groups).

    Returns:
        `dict`: ``diff`` (mean other - mean baseline), its interval ``lo`` / ``hi`` at ``level`` with the
        Welch-Satterthwaite degrees of freedom ``df``, ``t`` and the two-sided ``p``. Each is None where the test
        is undefined (fewer than two finite values in a group, or no spread at all).
    """
    a, b = finite(baseline), finite(other)
    out: dict[str, float | None] = {"diff": float(b.mean() - a.mean()) if len(a) and len(b) else None,
                                    "lo": None, "hi": None, "df": None, "t": None, "p": None}
    if len(a) < 2 or len(b) < 2:
        return out
    va, vb = a.var(ddof=DDOF) / len(a), b.var(ddof=DDOF) / len(b)
    if va + vb == 0:
        return out
    test = scipy_stats.ttest_ind(b, a, equal_var=False)
    df = (va + vb) ** 2 / (va ** 2 / (len(a) - 1) + vb ** 2 / (len(b) - 1))
    half = scipy_stats.t.ppf(0.5 + level / 2, df) * math.sqrt(va + vb)
    out.update(lo=out["diff"] - half, hi=out["diff"] + half, df=float(df), t=float(test.statistic),
               p=float(test.pvalue))
    return out


def _pairs(reference: Values | Mapping, other: Values | Mapping) -> list[tuple[float, float]]:
    if isinstance(reference, Mapping) and isinstance(other, Mapping):  # seed -> value: the seeds both have
        seeds = sorted(set(reference) & set(other))
        reference, other = [reference[s] for s in seeds], [other[s] for s in seeds]
    return [(a, b) for a, b in zip(reference, other)
            if a is not None and b is not None and math.isfinite(a) and math.isfinite(b)]


def paired_test(reference: Values | Mapping[int, float], other: Values | Mapping[int, float],
                level: float = LEVEL) -> dict:
    """``other - reference`` per seed: the paired t-test and the Wilcoxon signed-rank test on the differences.

    Args:
        reference, other: the values of each seed, in the same seed order; or two mappings seed -> value, paired on
            the seeds both have. A pair with a missing or non-finite value on either side is left out.
        level (`float`): of the intervals.

    Returns:
        `dict`: ``n`` pairs; ``mean_diff``; its bootstrap interval ``ci_lo`` / ``ci_hi`` and its t-interval
        ``t_lo`` / ``t_hi``; ``t_p`` (paired t: 1.0 when every difference is 0, 0.0 when all are the same non-zero
        value) and ``wilcoxon_p``. None where a test cannot run (fewer than 2 pairs; Wilcoxon: all differences 0).
    """
    diffs = np.asarray([b - a for a, b in _pairs(reference, other)], dtype=float)
    out: dict = {"n": len(diffs), "mean_diff": None, "ci_lo": None, "ci_hi": None, "t_lo": None, "t_hi": None,
                 "t_p": None, "wilcoxon_p": None}
    if not len(diffs):
        return out
    out["mean_diff"] = float(round(diffs.mean(), 12))
    out["ci_lo"], out["ci_hi"] = bootstrap_ci(diffs, level)
    if len(diffs) < 2:
        return out
    out["t_lo"], out["t_hi"] = t_interval(diffs, level)
    if np.all(diffs == 0):
        out["t_p"] = 1.0
        return out
    spread = diffs.std(ddof=DDOF) > 0
    out["t_p"] = float(scipy_stats.ttest_1samp(diffs, 0.0).pvalue) if spread else 0.0
    out["wilcoxon_p"] = float(scipy_stats.wilcoxon(diffs).pvalue)
    return out
