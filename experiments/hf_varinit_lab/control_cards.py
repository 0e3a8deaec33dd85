"""The control sections of a ``compare`` card: per-arm CIs, paired tests, the scale verdict, best lrs and divergences.

Every verdict names its test: paired t and Wilcoxon signed-rank on per-seed differences (arms share each seed's
batch order), bootstrap 95 % CIs of means, and p < 0.05 as the threshold of "detectable".
"""

from __future__ import annotations

import math

from hf_varinit.report.tables import format_cell, markdown_table

__all__ = ["P_THRESHOLD", "best_lr_section", "ci_table", "paired_table", "pilot_cost_line", "scale_verdict"]

P_THRESHOLD = 0.05
LOWER_IS_BETTER = {"final_train_loss": True, "test_loss": True, "test_accuracy": False}
LABELS = {"final_train_loss": "final train loss", "test_loss": "test NLL", "test_accuracy": "test accuracy"}


def _label(metric: str) -> str:
    return LABELS.get(metric, metric.replace("steps_to_", "steps to train loss ≤ "))


def _ci(m, lo, hi, digits: int = 4) -> str:
    if m is None or (isinstance(m, float) and math.isnan(m)):
        return "—"
    if lo is None:
        return format_cell(m, digits)
    return f"{format_cell(m, digits)} [{format_cell(lo, 3)}, {format_cell(hi, 3)}]"


def ci_table(groups: list[dict], metrics: list[str]) -> str:
    """Per arm: the mean of every metric with its bootstrap 95 % CI over seeds (steps: over seeds that reached)."""
    rows = []
    for g in groups:
        row = {"arm": g["arm"], "n": g["n_seeds"], "diverged": g["diverged"]}
        for name in metrics:
            cell = _ci(g[f"{name}_mean"], g[f"{name}_lo"], g[f"{name}_hi"], 5 if name.startswith("steps") else 4)
            row[name] = cell + (f" ({g[f'{name}_reached']})" if name.startswith("steps_to_") else "")
        rows.append(row)
    return markdown_table(rows, ["arm", "n", *metrics, "diverged"],
                          ["arm", "seeds", *map(_label, metrics), "diverged (non-finite or > ln C)"])


def _p(x) -> str:
    return "—" if x is None else f"{x:.2g}"


def paired_table(rows: list[dict]) -> str:
    """The paired tests: other − reference per seed, mean [bootstrap 95 % CI], paired t and Wilcoxon p."""
    cells = [{"pair": f"{r['arm']} − {r['reference']}", "metric": _label(r["metric"]), "n": r["n"],
              "diff": _ci(r["mean_diff"], r["ci_lo"], r["ci_hi"], 3), "t": _p(r["t_p"]), "w": _p(r["wilcoxon_p"])}
             for r in rows]
    return markdown_table(cells, ["pair", "metric", "n", "diff", "t", "w"],
                          ["pair (other − reference)", "metric", "paired seeds", "mean difference [95 % CI]",
                           "paired t p", "Wilcoxon p"])


def _find(rows: list[dict], ref: str, arm: str, metric: str) -> dict | None:
    return next((r for r in rows if r["reference"] == ref and r["arm"] == arm and r["metric"] == metric), None)


def _neighbour(rows: list[dict], ref: str, arm: str, metric: str) -> str:
    r = _find(rows, ref, arm, metric)
    if r is None or r["mean_diff"] is None:
        return f"{arm}: no pairs"
    worse = r["mean_diff"] > 0 if LOWER_IS_BETTER[metric] else r["mean_diff"] < 0
    sig = r["t_p"] is not None and r["t_p"] < P_THRESHOLD
    what = ("worse" if worse else "better") + (" (detectable)" if sig else " (not detectable)")
    return f"{arm} − {ref} = {r['mean_diff']:.3g} (t p={_p(r['t_p'])}, Wilcoxon p={_p(r['wilcoxon_p'])}): {what}"


def scale_verdict(groups: list[dict], rows: list[dict], alphas: list[float], suffix: str = "") -> str:
    """Is alpha = 1 a minimum of the final train loss and of the test NLL (and a maximum of test accuracy)?

    alpha = 1 counts as a minimum of a metric when both grid neighbours are worse with paired t p < 0.05; the
    arg-min of the mean over the grid is stated as well.
    """
    grid = sorted(alphas)
    if 1.0 not in grid or len(grid) < 3:
        return "alpha = 1 and both its neighbours must be on the --alphas grid for the minimum test."
    i = grid.index(1.0)
    if i == 0 or i == len(grid) - 1:
        return "alpha = 1 is at the edge of the grid: it cannot be tested as a minimum."
    ref = f"alpha-1{suffix}"
    lines = []
    for family, prefix in (("every layer", "alpha-"), ("head only (hidden layers at He)", "head-alpha-")):
        arms = {a: next((g for g in groups if g["arm"] == f"{prefix}{a:g}{suffix}"), None) for a in grid}
        if any(g is None for g in arms.values()):
            continue
        for metric, lower in LOWER_IS_BETTER.items():
            means = {a: g[f"{metric}_mean"] for a, g in arms.items()}
            best = (min if lower else max)(means, key=lambda a: means[a])
            if prefix == "alpha-":
                lo, hi = (f"alpha-{grid[i - 1]:g}{suffix}", f"alpha-{grid[i + 1]:g}{suffix}")
                tests = [_find(rows, ref, n, metric) for n in (lo, hi)]
                worse = [t is not None and t["mean_diff"] is not None and t["t_p"] is not None
                         and t["t_p"] < P_THRESHOLD and ((t["mean_diff"] > 0) == lower) for t in tests]
                kind = "minimum" if lower else "maximum"
                verdict = (f"alpha = 1 **is** a local {kind}" if all(worse) else f"alpha = 1 is **not** a {kind}")
                detail = "; ".join(_neighbour(rows, ref, n, metric) for n in (lo, hi))
                lines.append(f"- {family}, {_label(metric)}: best mean at alpha = {best:g}; {verdict} ({detail}).")
            else:
                lines.append(f"- {family}, {_label(metric)}: best mean at alpha = {best:g} "
                             f"(means: {', '.join(f'{a:g}: {format_cell(m, 4)}' for a, m in means.items())}).")
    return "\n".join(lines)


def best_lr_section(best: dict) -> str:
    """Each arm's best lr and its divergences over the lr grid."""
    rows = [{"arm": arm, "best": format_cell(b["best_lr"], 3) if b["best_lr"] else "none (all diverged)",
             "div": f"{b['diverged_runs']}/{b['runs']}",
             "lrs": ", ".join(f"{x:g}" for x in b["diverged_lrs"]) or "none"} for arm, b in best.items()]
    return markdown_table(rows, ["arm", "best", "div", "lrs"],
                          ["arm", "best lr", "diverged runs over the grid", "lrs with a diverged seed"])


def pilot_cost_line(summary: dict) -> str:
    """What the optimal rule costs before the first real run: pilot steps, calibration steps (each pilot's cost is
    `hf_varinit.report.cost.run_cost` of its record)."""
    parts = []
    for lr, info in summary.get("pilots", {}).items():
        cal = info["calibration"]
        cal_text = "no calibration" if cal is None else (
            f"calibration {cal['rounds']} pilot(s) = {cal['steps']} steps "
            f"({'converged' if cal['converged'] else 'not converged'})")
        parts.append(f"lr {lr}: He-normal pilot {info['pilot_steps']} steps; {cal_text}")
    return "Pilot cost (SGD steps spent before the first run of the optimal arms): " + "; ".join(parts) + "."
