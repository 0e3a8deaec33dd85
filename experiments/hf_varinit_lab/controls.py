"""The controls of ``hf-varinit compare``: the arms of each study, the per-arm statistics, the paired tests and the
learning-rate grid (best lr per arm, divergence counts).

* Scale arms (``--alphas``): s0² = alpha·V(W) on every tracked tensor (``alpha-<a>``; alpha 1 is the
  ``optimal`` arm), and with ``--head-only`` the hidden layers at He with only the head at alpha·V(W)_head
  (``head-alpha-<a>``; alpha 1 is He with the head at V(W)_head). Every rule draws the same standard-normal noise
  for a given seed, so arms that differ only in scale also share the init noise.
* A run *diverges* when its final training loss is not finite or above chance, ln C.
* Best lr of an arm: among the lrs where none of its seeds diverged, the one with the lowest mean final training
  loss over seeds.

The statistics are the library's, `hf_varinit.train.study_stats` (std over seeds with ddof 1).

Example:
    >>> [a for a, _, _ in scale_arms({"layers.0.linear": 1e-2, "head": 2e-2}, [0.5, 1.0], head_only=True)]
    ['he-normal', 'alpha-0.5', 'alpha-1', 'head-alpha-0.5', 'head-alpha-1']
"""

from __future__ import annotations

import math

from hf_varinit.arch.keys import parse_layer_key
from hf_varinit.train.study_stats import bootstrap_ci, mean_std, paired_test

__all__ = ["METRICS", "best_lrs", "diverged_run", "head_keys", "metric_names", "paired_rows", "scale_arms",
           "summarize_groups"]

METRICS = ("final_train_loss", "test_loss", "test_accuracy")  # the per-run numbers every study reports


def metric_names(targets: list[float]) -> list[str]:
    """The per-run metrics: `METRICS`, then steps to each target train loss."""
    return [*METRICS, *(f"steps_to_{t:g}" for t in targets)]


def head_keys(variances: dict[str, float]) -> list[str]:
    """The keys of a variance table that belong to no hidden layer (the classifier head)."""
    return [k for k in variances if parse_layer_key(k)[0] is None]


def scale_arms(variances: dict[str, float], alphas: list[float], *, head_only: bool) -> list[tuple[str, object, str]]:
    """``(arm, rule, activation)`` of the scale study: He-normal, alpha·V(W) everywhere, then (``head_only``) He
    with the head at alpha·V(W)_head."""
    arms: list[tuple[str, object, str]] = [("he-normal", "kaiming", "relu")]
    arms += [(f"alpha-{a:g}", {"name": "optimal", "variances": {k: a * v for k, v in variances.items()}}, "relu")
             for a in alphas]
    if head_only:
        heads = head_keys(variances)
        arms += [(f"head-alpha-{a:g}", {"name": "optimal", "variances": {k: a * variances[k] for k in heads}}, "relu")
                 for a in alphas]
    return arms


def diverged_run(row: dict, chance: float) -> bool:
    """A run diverged: its final training loss is not finite or above chance ``ln C``."""
    loss = row["final_train_loss"]
    return bool(row.get("diverged")) or not math.isfinite(loss) or loss > chance


def summarize_groups(runs: list[dict], targets: list[float], chance: float) -> list[dict]:
    """Per arm (and lr): mean ± std (sample std, ddof 1; `hf_varinit.train.study_stats`), bootstrap 95 % CI of
    every metric, targets reached, divergences."""
    out = []
    for arm in dict.fromkeys(r["arm"] for r in runs):
        rs = [r for r in runs if r["arm"] == arm]
        group = {"arm": arm, "base_arm": rs[0]["base_arm"], "lr": rs[0]["lr"], "activation": rs[0]["activation"],
                 "rule": rs[0]["rule"], "n_seeds": len(rs), "diverged": sum(diverged_run(r, chance) for r in rs)}
        for name in metric_names(targets):
            values = [r[name] for r in rs if r[name] is not None]
            m, s = mean_std(values)
            lo, hi = bootstrap_ci(values)
            group.update({f"{name}_mean": m, f"{name}_std": s, f"{name}_lo": lo, f"{name}_hi": hi})
            if name.startswith("steps_to_"):
                group[f"{name}_reached"] = f"{len(values)}/{len(rs)}"
        first = f"steps_to_{targets[0]:g}" if targets else None
        group.update({"steps_to_target_mean": group.get(f"{first}_mean"),
                      "steps_to_target_std": group.get(f"{first}_std"),
                      "reached_target": group.get(f"{first}_reached", "")})
        out.append(group)
    return out


def best_lrs(groups: list[dict]) -> dict[str, dict]:
    """Per base arm: the best lr (no diverged seed, lowest mean final train loss) and its divergences over the grid."""
    out = {}
    for base in dict.fromkeys(g["base_arm"] for g in groups):
        mine = [g for g in groups if g["base_arm"] == base]
        ok = [g for g in mine if g["diverged"] == 0]
        best = min(ok, key=lambda g: g["final_train_loss_mean"], default=None)
        out[base] = {"best_lr": best["lr"] if best else None, "best_arm": best["arm"] if best else None,
                     "diverged_runs": sum(g["diverged"] for g in mine),
                     "runs": sum(g["n_seeds"] for g in mine),
                     "diverged_lrs": [g["lr"] for g in mine if g["diverged"]]}
    return out


def paired_rows(runs: list[dict], pairs: list[tuple[str, str]], targets: list[float]) -> list[dict]:
    """One row per (reference arm, other arm, metric): the paired test of other − reference over shared seeds."""
    rows = []
    for ref, other in pairs:
        a = {r["seed"]: r for r in runs if r["arm"] == ref}
        b = {r["seed"]: r for r in runs if r["arm"] == other}
        seeds = [s for s in a if s in b]
        for name in metric_names(targets):
            test = paired_test([a[s][name] for s in seeds], [b[s][name] for s in seeds])
            rows.append({"reference": ref, "arm": other, "metric": name,
                         **{k: test[k] for k in ("n", "mean_diff", "ci_lo", "ci_hi", "t_p", "wilcoxon_p")}})
    return rows
