"""The pre-registered depth statistic and the schedule-aware stationarity of several seeds, with 95 % CIs.

Usage (the lab installed: ``pip install -e experiments/``):
    python scripts/dynamics_seeds.py runs/lm-study/compare/runs/gpt2/seed* runs/lm-study/constant/seed* \\
        --output runs/dynamics-seeds/lm-study [--overwrite]

Each RUN is an ``hf-varinit pretrain`` run folder (read only once its ``final/`` exists: a run still training is
skipped, and said so) or a ``variance.safetensors`` file. Runs are grouped by the lr schedule and ``max_steps`` of
their recipe (`hf_varinit.record.recipe.RunRecipe`; a record whose schedule is unknown goes to
``unknown-schedule``); each group should hold seeds of one config.

Per seed (definitions in the lab's `hf_varinit_lab.dynamics_trends` and in `hf_varinit.report.steady_state`):
``rho_settle`` (Spearman rho of layer index vs the Q/K/V settle step, amplitude-normalised, median over a layer's
q, k, v),
``rho_early_growth`` (layer index vs var(t_e)/var(0) - 1 at 10 % of training), their p-values, the trailing
window's share of the lr budget, its mean lr as a fraction of the peak, and how many Q/K/V tensors the
schedule-aware test calls stationary. Per group: the mean over seeds and a 95 % **t-interval**
(mean ± t(0.975, n-1) · sd / sqrt(n), sd with ddof 1; needs 2 seeds). A direction is called only when the
whole interval lies on one side of 0.

Writes into ``--output`` (all at once; nothing is left half-written): ``README.md`` (tables and verdicts),
``seeds.csv`` (one row per seed), ``summary.csv`` (one row per group and statistic), and per group
``variance_vs_step_<group>.png`` and ``variance_vs_cumulative_lr_<group>.png`` (var/var(0), the mean of q, k, v,
for the first, middle and last layer: mean ± 1 sd over seeds).
"""

from __future__ import annotations

import argparse
import math
import shlex
import sys
from pathlib import Path

import numpy as np
import pandas as pd

from hf_varinit.arch.keys import layer_key
from hf_varinit.errors import ConfigError
from hf_varinit.io_utils import atomic_folder
from hf_varinit.record.stats_file import STATS_FILENAME, VarianceStats, load_stats
from hf_varinit.report.plots import plot_seed_bands
from hf_varinit.report.steady_state import analyze, cumulative_lr, known_schedule
from hf_varinit.report.tables import markdown_table
from hf_varinit.train.study_stats import t_interval
from hf_varinit_lab.dynamics_trends import ALPHA, QKV, depth_statistic

STATISTICS = {"rho_settle": ("deep layers settle later", 1),
              "rho_early_growth": ("shallow layers expand faster early", -1)}


def find_records(paths: list[str]) -> tuple[list[VarianceStats], list[str]]:
    """The records of finished runs, and a note per path skipped (a run folder without ``final/``, another file)."""
    records, skipped = [], []
    for raw in paths:
        path = Path(raw)
        if path.is_dir():
            if not (path / "final").is_dir():
                skipped.append(f"{path}: no final/ yet (still training?)")
                continue
            path = path / STATS_FILENAME
        elif path.suffix != ".safetensors":  # e.g. the seed0.log next to seed0/ that a shell glob picks up
            skipped.append(f"{path}: not a run folder or a .safetensors file")
            continue
        records.append(load_stats(path))
    return records, skipped


def group_name(stats: VarianceStats) -> str:
    recipe = stats.recipe
    if not known_schedule(recipe):
        return "unknown-schedule"
    return f"{recipe.lr_schedule}-{recipe.max_steps}"


def check_groups(records: list[VarianceStats]) -> None:
    """Refuse a group whose runs track other tensors or shapes (seeds of one config share them)."""
    shapes: dict[str, tuple[tuple, str]] = {}
    for stats in records:
        shape = tuple((t["key"], t.get("numel")) for t in stats.tracked)
        first = shapes.setdefault(group_name(stats), (shape, str(stats.path)))
        if first[0] != shape:
            raise ConfigError(f"{stats.path} and {first[1]} have the same schedule ({group_name(stats)}) but track "
                              "other tensors or shapes; give seeds of one config per schedule")


def seed_row(stats: VarianceStats) -> dict:
    """The per-seed statistics of one record."""
    statistic = depth_statistic(stats)
    if statistic is None:
        raise ConfigError(f"{stats.path}: no Q/K/V tensors; give records of a transformer (hf-varinit pretrain)")
    tensors = analyze(stats)
    qkv = [a for a in tensors.values() if a.role in QKV]
    window = qkv[0] if qkv else None
    return {"group": group_name(stats), "seed": stats.metadata.get("seed"), "records": len(stats),
            "rho_settle": statistic.rho_settle, "p_settle": statistic.p_settle,
            "rho_early_growth": statistic.rho_early_growth, "p_early_growth": statistic.p_early_growth,
            "early_step": statistic.early_step,
            "window_lr_share": window.window_lr_share if window else None,
            "window_lr_fraction": window.window_lr_fraction if window else None,
            "stationary_qkv": f"{sum(bool(a.stationary) for a in qkv)}/{len(qkv)}", "path": str(stats.path)}


def mean_interval(values: list[float]) -> tuple[float, float, float, int]:
    """(mean, low, high, n) of the finite values: a Student t-interval; low = high = NaN with fewer than 2."""
    x = [v for v in values if v is not None and math.isfinite(v)]
    low, high = t_interval(x)
    return (float(np.mean(x)) if x else math.nan, math.nan if low is None else low,
            math.nan if high is None else high, len(x))


def verdict(low: float, high: float, claim: str, sign: int) -> str:
    if not (math.isfinite(low) and math.isfinite(high)):
        return f"{claim}: no CI (fewer than 2 seeds)"
    if (low > 0 and sign > 0) or (high < 0 and sign < 0):
        return f"{claim}: **yes** (the 95 % CI excludes 0)"
    if (low > 0 and sign < 0) or (high < 0 and sign > 0):
        return f"{claim}: **no, the opposite** (the 95 % CI excludes 0 on the other side)"
    return f"{claim}: **not shown** (the 95 % CI includes 0)"


def summarise(rows: pd.DataFrame) -> pd.DataFrame:
    out = []
    for group, part in rows.groupby("group", sort=True):
        for name, (claim, sign) in STATISTICS.items():
            mean, low, high, n = mean_interval(list(part[name]))
            out.append({"group": group, "statistic": name, "seeds": n, "mean": mean, "ci_low": low,
                        "ci_high": high, "verdict": verdict(low, high, claim, sign)})
        for name in ("window_lr_share", "window_lr_fraction"):
            mean, low, high, n = mean_interval(list(part[name]))
            out.append({"group": group, "statistic": name, "seeds": n, "mean": mean, "ci_low": low,
                        "ci_high": high, "verdict": ""})
    return pd.DataFrame(out)


def curves(records: list[VarianceStats], against: str) -> dict[str, list[tuple[np.ndarray, np.ndarray]]]:
    """Label -> per seed (x, var/var(0) averaged over q, k, v) for the first, middle and last layer."""
    layers = records[0].layers()
    chosen = sorted({layers[0], layers[len(layers) // 2], layers[-1]}) if layers else []
    out: dict[str, list[tuple[np.ndarray, np.ndarray]]] = {}
    for stats in records:
        x = stats.step if against == "step" else cumulative_lr(stats.recipe, stats.step)
        if x is None:
            continue
        for layer in chosen:
            series = [stats.series(layer_key(layer, r), "var").astype(float) for r in QKV
                      if layer_key(layer, r) in stats.keys]
            if series:
                out.setdefault(f"layer {layer}", []).append((x, np.mean([s / s[0] for s in series], axis=0)))
    return out


def readme(rows: pd.DataFrame, summary: pd.DataFrame, skipped: list[str], plots: list[str]) -> str:
    seeds = markdown_table(rows.drop(columns=["path"]))
    table = markdown_table(summary, ["group", "statistic", "seeds", "mean", "ci_low", "ci_high", "verdict"],
                           ["group", "statistic", "seeds", "mean", "95 % CI low", "95 % CI high", "verdict"])
    lines = [
        "# Depth statistic and schedule-aware stationarity across seeds", "",
        "Regenerate with:", "", "```bash", "python " + " ".join(shlex.quote(a) for a in sys.argv), "```", "",
        "Pre-registered statistic (definitions in `hf_varinit_lab.dynamics_trends`): Q/K/V only; a tensor's settle "
        "step is the first step after which |var(t) − var(T)| ≤ 0.1 · |var(T) − var(0)| through the end; a layer's "
        "value is the median over its q, k, v; `rho_settle` = Spearman rho(layer index, settle step) (> 0: deep layers "
        "settle later); `rho_early_growth` = Spearman rho(layer index, var(t_e)/var(0) − 1 at 10 % of training) "
        "(< 0: shallow layers expand faster early). 95 % CI: Student t-interval over seeds (mean ± t(0.975, n−1) · "
        f"sd/√n). Per-seed p-values are each seed's Spearman test (α = {ALPHA:g}); the verdicts use the CI.", "",
        "`window_lr_share`: the trailing window's share of the run's lr budget; `window_lr_fraction`: its mean lr "
        "over the peak lr; `stationary_qkv`: Q/K/V tensors the schedule-aware test calls stationary "
        "(`min_lr_fraction` = 0.1). `seeds`: the seeds with a value (a rho is undefined when fewer than 3 layers "
        "have one, or all layers tie).", "",
        "## Summary", "", table, "", "## Per seed", "", seeds, "",
    ]
    if skipped:
        lines += ["## Skipped", "", *(f"- {s}" for s in skipped), ""]
    lines += ["## Variance against step and against cumulative lr", "",
              *(f"![{p[:-4]}]({p})\n" for p in plots)]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> Path:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("runs", nargs="+", metavar="RUN", help="run folders or variance.safetensors files")
    parser.add_argument("--output", required=True, help="folder to write (README.md, CSVs, PNGs)")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing output folder")
    args = parser.parse_args(argv)
    output = Path(args.output)
    if output.exists() and any(output.iterdir()) and not args.overwrite:
        raise ConfigError(f"--output {output} exists and is not empty; pass --overwrite to replace it")
    records, skipped = find_records(args.runs)
    if not records:
        raise ConfigError(f"no finished run among {args.runs}: " + "; ".join(skipped))
    check_groups(records)
    rows = pd.DataFrame([seed_row(stats) for stats in records]).sort_values(["group", "seed"], kind="stable")
    summary = summarise(rows)
    with atomic_folder(output) as tmp:
        plots = []
        for group in sorted(rows["group"].unique()):
            members = [s for s in records if group_name(s) == group]
            for against, xlabel in (("step", "step"), ("cumulative_lr", "cumulative learning rate")):
                bands = curves(members, against)
                if bands:
                    name = f"variance_vs_{against}_{group}.png"
                    plot_seed_bands(bands, xlabel, f"Q/K/V variance vs {xlabel} ({group}, mean ± 1 sd)", tmp / name)
                    plots.append(name)
        rows.to_csv(tmp / "seeds.csv", index=False)
        summary.to_csv(tmp / "summary.csv", index=False)
        (tmp / "README.md").write_text(readme(rows, summary, skipped, plots), encoding="utf-8")
    print(summary.to_string(index=False))
    for note in skipped:
        print(f"skipped {note}")
    print(f"wrote {output}")
    return output


if __name__ == "__main__":
    main()
