"""The report of the LM init study (``hf-varinit compare --study lm``): per-run metrics -> tables, tests, card, plot.

Three steps, as the runs are recorded: `run_rows` reads each run's ``metrics.jsonl`` and ``variance.safetensors``
into one row per (arm, seed); `summarize` turns them into one row per arm (eval loss at fixed steps, steps to the
target loss with a 95 % t-interval, Welch t-tests against the first arm, the pilot's cost in tokens);
`write_lm_report` writes ``README.md``, ``summary.csv``, ``runs.csv`` and ``curves.png`` (each file atomically).

Example:
    >>> welch([1.0, 2.0, 3.0], [2.0, 3.0, 4.0])["diff"]  # doctest: +SKIP
    1.0
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from scipy import stats as scipy_stats

from hf_varinit.errors import ReportError, StatsError
from hf_varinit.init.rules import get_rule
from hf_varinit.io_utils import atomic_write, atomic_write_text
from hf_varinit.record.stats_file import STATS_FILENAME, load_stats
from hf_varinit.report.report import VarianceReport
from hf_varinit.report.tables import format_cell, markdown_table
from hf_varinit.studies.paired import paired_test, t_interval
from hf_varinit.studies.render import model_card

__all__ = ["METRICS", "RUN_COLUMNS", "pilot_cost", "read_metrics", "run_rows", "run_tokens", "steps_to_target",
           "paired", "summarize", "summary_table", "t_interval", "welch", "write_lm_report"]

METRICS = "metrics.jsonl"
SMOOTH = 5  # train-loss curves: trailing mean over this many log lines
ALPHA = 0.05  # 95 % intervals; "lower" / "higher" verdicts need p < ALPHA
RUN_COLUMNS = ["arm", "spec", "seed", "run_dir", "final_step", "final_eval_loss", "steps_to_target", "tokens",
               "wall_seconds"]


# ----------------------------------------------------------------------------- one run


def read_metrics(path: str | Path) -> pd.DataFrame:
    """One row per logged step of a ``metrics.jsonl`` (``step``, ``loss``, ``eval_loss``...), the last line of a
    step kept (a resumed run rewrites what followed its checkpoint)."""
    try:
        lines = [json.loads(line) for line in Path(path).read_text(encoding="utf-8").splitlines() if line.strip()]
    except (OSError, ValueError) as exc:
        raise ReportError(f"cannot read the metrics {path}: {exc}; rerun the study to finish the run") from exc
    frame = pd.DataFrame(lines)
    if frame.empty or "step" not in frame:
        raise ReportError(f"{path} has no metrics lines; rerun the study to finish the run")
    for column in ("loss", "eval_loss"):
        if column not in frame:
            frame[column] = np.nan
    return frame.drop_duplicates("step", keep="last").sort_values("step").reset_index(drop=True)


def steps_to_target(metrics: pd.DataFrame, target: float) -> int | None:
    """The first eval step whose eval loss is <= ``target`` (None: never reached)."""
    evals = metrics.dropna(subset=["eval_loss"])
    hit = evals[evals["eval_loss"] <= target]
    return None if hit.empty else int(hit["step"].iloc[0])


def run_tokens(metadata: dict) -> int | None:
    """Training tokens of a run from its statistics metadata: final_step x sequences_per_step x block_size."""
    try:
        return int(metadata["final_step"]) * int(metadata["sequences_per_step"]) * int(metadata["block_size"])
    except (KeyError, TypeError, ValueError):
        return None


def pilot_cost(spec: str) -> dict[str, Any]:
    """The cost of the report an arm's rule reads (``optimal:report=R``), in training tokens.

    A report of one training run costs that run's tokens (its metadata: final_step x sequences_per_step x
    block_size); a report of several runs (``hf-varinit report RUN_A RUN_B``) costs the sum over the source runs it
    lists, read from their statistics (unknown when one cannot be read); a report of one set of weights
    (``report --from-model``) costs the tokens its checkpoint says it was trained on (``hf-varinit pretrain`` writes
    them into ``final/config.json``), else unknown.

    Returns:
        `dict`: ``report`` (the source or None), ``tokens`` (int or None) and ``note`` (what the tokens mean).

    Raises:
        RuleError: the spec is not a valid rule; ReportError: the report cannot be loaded.
    """
    source = getattr(get_rule(spec), "report", None)
    if not isinstance(source, str):
        return {"report": None, "tokens": 0, "note": "no pilot"}
    report = VarianceReport.load(source)
    metadata = {**(report.stats.metadata if report.stats is not None else {}), **report.metadata}
    if report.is_snapshot:
        tokens = metadata.get("train_tokens")
        if isinstance(tokens, int) and not isinstance(tokens, bool):
            return {"report": source, "tokens": tokens, "note": "the final weights of one training run"}
        return {"report": source, "tokens": None, "note": "from final weights: training cost unknown"}
    sources = getattr(getattr(report, "transfer", None), "sources", None)
    if sources:
        costs = [_source_tokens(s) for s in sources]
        total = None if any(c is None for c in costs) else int(sum(costs))
        return {"report": source, "tokens": total,
                "note": f"{len(sources)} source runs" + ("" if total is not None else ", not all readable")}
    tokens = run_tokens(metadata)
    return {"report": source, "tokens": tokens, "note": "one source run" if tokens is not None else "unknown"}


def _source_tokens(source: str) -> int | None:
    try:
        return run_tokens(load_stats(source).metadata)
    except StatsError:
        return None


def run_rows(arms: Sequence[dict], seeds: Sequence[int], run_dir_of, target: float,
             wall_seconds: dict[str, float] | None = None) -> tuple[pd.DataFrame, dict[tuple[str, int], pd.DataFrame]]:
    """One row per (arm, seed) of finished runs (`RUN_COLUMNS`), and each run's metrics.

    Args:
        arms (`Sequence[dict]`): ``label``, ``spec`` and ``slug`` of every arm, the first the baseline.
        seeds (`Sequence[int]`): the seeds.
        run_dir_of (`Callable[[dict, int], Path]`): the run folder of an arm and seed.
        target (`float`): the eval loss of the steps-to-target column.
        wall_seconds (`dict[str, float]`, *optional*): ``"<slug>/seed<N>"`` -> training seconds.
    """
    rows, metrics = [], {}
    for arm in arms:
        for seed in seeds:
            run_dir = Path(run_dir_of(arm, seed))
            frame = read_metrics(run_dir / METRICS)
            metadata = load_stats(run_dir / STATS_FILENAME).metadata
            evals = frame.dropna(subset=["eval_loss"])
            rows.append({"arm": arm["label"], "spec": arm["spec"], "seed": seed, "run_dir": str(run_dir),
                         "final_step": int(frame["step"].iloc[-1]),
                         "final_eval_loss": float(evals["eval_loss"].iloc[-1]) if len(evals) else math.nan,
                         "steps_to_target": steps_to_target(frame, target), "tokens": run_tokens(metadata),
                         "wall_seconds": (wall_seconds or {}).get(f"{arm['slug']}/seed{seed}")})
            metrics[arm["label"], seed] = frame
    runs = pd.DataFrame(rows, columns=RUN_COLUMNS)
    runs["steps_to_target"] = runs["steps_to_target"].astype("Int64")  # an integer column with gaps
    return runs, metrics


def default_horizons(metrics: dict[tuple[str, int], pd.DataFrame]) -> list[int]:
    """Every eval step that all runs have (the last step included)."""
    common = None
    for frame in metrics.values():
        steps = set(frame.dropna(subset=["eval_loss"])["step"].astype(int))
        common = steps if common is None else common & steps
    return sorted(common or ())


def eval_at(frame: pd.DataFrame, step: int) -> float:
    """The eval loss at exactly ``step`` (NaN when the run did not evaluate there)."""
    hit = frame[(frame["step"] == step) & frame["eval_loss"].notna()]
    return float(hit["eval_loss"].iloc[0]) if len(hit) else math.nan


# ----------------------------------------------------------------------------- statistics


def welch(baseline: Sequence[float], other: Sequence[float]) -> dict[str, float | None]:
    """Welch's t-test of ``other`` against ``baseline``: ``diff`` (mean other - mean baseline), its 95 % interval
    (``lo``, ``hi``, Welch-Satterthwaite degrees of freedom ``df``), ``t`` and the two-sided ``p``.

    Values are None where the test is undefined (fewer than two values in an arm, or no spread at all).
    """
    a = np.asarray([v for v in baseline if v is not None and math.isfinite(v)], dtype=float)
    b = np.asarray([v for v in other if v is not None and math.isfinite(v)], dtype=float)
    out: dict[str, float | None] = {"diff": float(b.mean() - a.mean()) if len(a) and len(b) else None,
                                    "lo": None, "hi": None, "df": None, "t": None, "p": None}
    if len(a) < 2 or len(b) < 2:
        return out
    va, vb = a.var(ddof=1) / len(a), b.var(ddof=1) / len(b)
    if va + vb == 0:
        return out
    test = scipy_stats.ttest_ind(b, a, equal_var=False)
    df = (va + vb) ** 2 / (va ** 2 / (len(a) - 1) + vb ** 2 / (len(b) - 1))
    half = scipy_stats.t.ppf(1 - ALPHA / 2, df) * math.sqrt(va + vb)
    out.update(lo=out["diff"] - half, hi=out["diff"] + half, df=float(df), t=float(test.statistic),
               p=float(test.pvalue))
    return out


def paired(baseline: Mapping[int, float], other: Mapping[int, float]) -> dict[str, float | None]:
    """Paired t-test over the seeds both arms ran (every arm of a seed shares its data order): ``diff`` (mean of
    other - baseline per seed), its 95 % t-interval (``lo``, ``hi``), ``n`` seeds and the two-sided ``p``."""
    seeds = sorted(set(baseline) & set(other))
    test = paired_test([baseline[s] for s in seeds], [other[s] for s in seeds])
    d = np.asarray([other[s] - baseline[s] for s in seeds], dtype=float)
    d = d[np.isfinite(d)]
    out = {"diff": test["mean_diff"], "lo": None, "hi": None, "n": test["n"], "p": None}
    if len(d) >= 2 and d.std(ddof=1) > 0:  # a spread to test against
        (out["lo"], out["hi"]), out["p"] = t_interval(d), test["t_p"]
    return out


def summarize(runs: pd.DataFrame, metrics: dict[tuple[str, int], pd.DataFrame], arms: Sequence[dict],
              horizons: Sequence[int], pilots: dict[str, dict]) -> pd.DataFrame:
    """One row per arm: eval loss at each horizon and at the end (mean, std over seeds), steps to target (mean and
    95 % t-interval over the seeds that reached it, ``reached`` k/N), Welch tests against the first arm, tokens."""
    rows, first = [], runs[runs["arm"] == arms[0]["label"]]
    for arm in arms:
        mine = runs[runs["arm"] == arm["label"]]
        row: dict[str, Any] = {"arm": arm["label"], "spec": arm["spec"], "seeds": len(mine)}
        for h in horizons:
            values = [eval_at(metrics[arm["label"], s], h) for s in mine["seed"]]
            row[f"eval_{h}_mean"], row[f"eval_{h}_std"] = _mean_std(values)
        row["final_eval_mean"], row["final_eval_std"] = _mean_std(mine["final_eval_loss"])
        reached = [int(s) for s in mine["steps_to_target"].dropna()]
        row["reached"] = f"{len(reached)}/{len(mine)}"
        row["steps_to_target_mean"] = float(np.mean(reached)) if reached else None
        row["steps_to_target_lo"], row["steps_to_target_hi"] = t_interval(reached)
        final = welch(first["final_eval_loss"], mine["final_eval_loss"])
        steps = welch([float(s) for s in first["steps_to_target"].dropna()], [float(s) for s in reached])
        pairs = paired(dict(zip(first["seed"], first["final_eval_loss"])), dict(zip(mine["seed"],
                                                                                     mine["final_eval_loss"])))
        for prefix, test in (("final_eval", final), ("steps", steps), ("paired_eval", pairs)):
            row.update({f"{prefix}_diff": test["diff"], f"{prefix}_diff_lo": test["lo"],
                        f"{prefix}_diff_hi": test["hi"], f"{prefix}_p": test["p"]})
        tokens = mine["tokens"].dropna()
        row["run_tokens"] = int(tokens.mean()) if len(tokens) else None
        pilot = pilots.get(arm["label"], {"tokens": 0, "note": "no pilot"})
        row["pilot_tokens"], row["pilot_note"] = pilot["tokens"], pilot["note"]
        row["pilot_report"] = pilot.get("report")
        known = row["run_tokens"] is not None and pilot["tokens"] is not None
        row["total_tokens"] = row["run_tokens"] + pilot["tokens"] if known else None
        rows.append(row)
    return pd.DataFrame(rows)


def _mean_std(values) -> tuple[float | None, float | None]:
    x = np.asarray([v for v in values if v is not None and math.isfinite(v)], dtype=float)
    if not len(x):
        return None, None
    return float(x.mean()), float(x.std(ddof=1)) if len(x) > 1 else None


# ----------------------------------------------------------------------------- rendering


def _pm(mean, std, digits: int = 4) -> str:
    if mean is None or (isinstance(mean, float) and math.isnan(mean)):
        return "n/a"
    return format_cell(mean, digits) + ("" if std is None or math.isnan(std) else f" ± {format_cell(std, 2)}")


def _interval(mean, lo, hi, reached: str, digits: int = 4) -> str:
    n, total = map(int, reached.split("/"))
    missed = f"not reached {total - n}/{total}"
    if mean is None or (isinstance(mean, float) and math.isnan(mean)):
        return missed
    text = format_cell(float(mean), digits) + ("" if lo is None or math.isnan(lo) else
                                               f" [{format_cell(lo, digits)}, {format_cell(hi, digits)}]")
    return text + ("" if n == total else f" ({missed})")


def _tokens(value) -> str:
    return "unknown" if value is None or (isinstance(value, float) and math.isnan(value)) else f"{int(value):,}"


def _test_cell(row, prefix: str) -> str:
    diff, p = row[f"{prefix}_diff"], row[f"{prefix}_p"]
    if diff is None or (isinstance(diff, float) and math.isnan(diff)):
        return "n/a"
    if p is None or math.isnan(p):
        return f"{diff:+.4g} (no test)"
    return f"{diff:+.4g} [{row[f'{prefix}_diff_lo']:+.4g}, {row[f'{prefix}_diff_hi']:+.4g}], p={p:.3g}"


def summary_table(summary: pd.DataFrame, horizons: Sequence[int], target: float) -> str:
    """The per-arm table of the card and the console (markdown, through `pandas.DataFrame.to_markdown`)."""
    shown = [h for h in horizons if h != horizons[-1]] if horizons else []
    table = pd.DataFrame({"arm": summary["arm"], "seeds": summary["seeds"]})
    for h in shown:
        table[f"eval @{h}"] = [_pm(r[f"eval_{h}_mean"], r[f"eval_{h}_std"]) for _, r in summary.iterrows()]
    table["final eval loss"] = [_pm(r["final_eval_mean"], r["final_eval_std"]) for _, r in summary.iterrows()]
    table[f"steps to eval ≤ {target:g} [95% CI]"] = [
        _interval(r["steps_to_target_mean"], r["steps_to_target_lo"], r["steps_to_target_hi"], r["reached"], 5)
        for _, r in summary.iterrows()]
    first = summary["arm"].iloc[0]
    for prefix, name in (("final_eval", "final eval"), ("paired_eval", "final eval, paired by seed,"),
                         ("steps", "steps")):
        table[f"Δ {name} vs {first} [95% CI], p"] = ["baseline"] + [_test_cell(r, prefix)
                                                                   for _, r in summary.iloc[1:].iterrows()]
    table["run tokens"] = [_tokens(v) for v in summary["run_tokens"]]
    table["pilot tokens"] = [_tokens(v) for v in summary["pilot_tokens"]]
    table["run + pilot"] = [_tokens(v) for v in summary["total_tokens"]]
    return markdown_table(table)


def verdicts(summary: pd.DataFrame, target: float) -> list[str]:
    """One plain sentence per arm and test against the first arm, stated from the numbers."""
    first, lines = summary.iloc[0], []
    for _, row in summary.iloc[1:].iterrows():
        for prefix, what, unit in (("final_eval", "final eval loss (Welch)", ""),
                                   ("paired_eval", "final eval loss (paired by seed)", ""),
                                   ("steps", f"steps to eval ≤ {target:g}", " steps")):
            diff, p = row[f"{prefix}_diff"], row[f"{prefix}_p"]
            head = f"{row['arm']} vs {first['arm']}, {what}:"
            if diff is None or (isinstance(diff, float) and math.isnan(diff)):
                lines.append(f"{head} not comparable (reached by {row['reached']} vs {first['reached']} seeds).")
            elif p is None or math.isnan(p):
                lines.append(f"{head} difference {diff:+.4g}{unit}; no test (fewer than two values or no spread).")
            elif p < ALPHA:
                word = "lower" if diff < 0 else "higher"
                lines.append(f"{head} {word} by {abs(diff):.4g}{unit} (95% CI {row[f'{prefix}_diff_lo']:+.4g} .. "
                             f"{row[f'{prefix}_diff_hi']:+.4g}, p={p:.3g}).")
            else:
                lines.append(f"{head} no detectable difference (p={p:.3g}; difference {diff:+.4g}{unit}, 95% CI "
                             f"{row[f'{prefix}_diff_lo']:+.4g} .. {row[f'{prefix}_diff_hi']:+.4g}).")
    return lines


def curves_plot(metrics: dict[tuple[str, int], pd.DataFrame], arms: Sequence[dict], path: Path) -> None:
    """Train loss (trailing mean over `SMOOTH` log lines) and eval loss against the step: mean ± std over seeds."""
    fig = Figure(figsize=(11, 4.2), layout="constrained")
    FigureCanvasAgg(fig)
    ax_train, ax_eval = fig.subplots(1, 2)
    for i, arm in enumerate(arms):
        frames = [f for (label, _), f in metrics.items() if label == arm["label"]]
        color = f"C{i % 10}"
        for ax, column, smooth in ((ax_train, "loss", SMOOTH), (ax_eval, "eval_loss", 1)):
            series = [f.dropna(subset=[column]).set_index("step")[column].rolling(smooth, min_periods=1).mean()
                      for f in frames]
            table = pd.concat(series, axis=1, join="inner")
            if table.empty:
                continue
            mean, std = table.mean(axis=1), table.std(axis=1, ddof=1).fillna(0.0)
            ax.plot(mean.index, mean, color=color, label=f"{arm['label']} (n={len(frames)})",
                    marker="o" if column == "eval_loss" else None, ms=3)
            ax.fill_between(mean.index, mean - std, mean + std, color=color, alpha=0.2)
    ax_train.set(title=f"train loss (mean of {SMOOTH} log lines), mean ± std over seeds", xlabel="step",
                 ylabel="loss")
    ax_eval.set(title="eval loss (held-out split), mean ± std over seeds", xlabel="step", ylabel="loss")
    ax_train.legend(fontsize=8)
    fig.savefig(path, dpi=110, format="png")


def _card(settings: dict, table: str, lines: list[str], horizons: Sequence[int]) -> str:
    arms = "\n".join(f"- `{a['label']}`: `{a['spec']}`" for a in settings["arms"])
    body = f"""
# LM init study: {', '.join(a['label'] for a in settings['arms'])}

Each arm is one init rule; each (arm, seed) is one ordinary `hf-varinit pretrain` run of the config
`{settings['config']}` for {settings['steps']} steps (runs in `runs/<arm>/seed<N>/`). Seeds: {settings['seeds']}.

{arms}

## Results

Mean ± std over seeds. Losses are the **eval loss** (mean token cross-entropy on the held-out split of the
corpus, which no run trains on). Steps to target: the first eval step with eval loss ≤ {settings['target_loss']:g};
mean and 95 % t-interval over the seeds that reached it (runs that never did are counted, not averaged in).
Δ: the arm minus the first arm, Welch's t-test (unequal variances), 95 % interval of the difference, two-sided p.
Paired by seed: every arm of a seed shares its data order, so the per-seed differences are tested (paired t-test).
Tokens: a run's training tokens; pilot: the tokens of the run(s) that made the report the rule reads (paid once;
for a report of final weights, the tokens that trained them, "unknown" when the checkpoint does not say); run +
pilot: the compute-fair total.
Eval steps reported: {', '.join(map(str, horizons)) or 'none in common'}.

{table}

{chr(10).join(f'- {line}' for line in lines) or '- one arm only: nothing to compare'}

![curves](curves.png)

Per arm: `summary.csv`; per run (final eval loss, steps to target, tokens, wall seconds): `runs.csv`; the
settings: `study.json`.

## Regenerate

```bash
{settings['command']}
```
"""
    return model_card(tags=["initialization", "language-model", "init-study"], datasets=[], body=body)


def write_lm_report(output: Path, settings: dict, runs: pd.DataFrame,
                    metrics: dict[tuple[str, int], pd.DataFrame], pilots: dict[str, dict]) -> tuple[pd.DataFrame, str]:
    """Write ``README.md``, ``summary.csv``, ``runs.csv`` and ``curves.png`` into ``output`` (each atomically, after
    everything is computed); returns the summary and the printed table."""
    arms = settings["arms"]
    horizons = sorted(set(settings.get("horizons") or default_horizons(metrics)) |
                      {int(runs["final_step"].max())})
    summary = summarize(runs, metrics, arms, horizons, pilots)
    table = summary_table(summary, horizons, settings["target_loss"])
    card = _card(settings, table, verdicts(summary, settings["target_loss"]), horizons)
    atomic_write(output / "curves.png", lambda tmp: curves_plot(metrics, arms, tmp))
    atomic_write_text(output / "summary.csv", summary.to_csv(index=False))
    atomic_write_text(output / "runs.csv", runs.to_csv(index=False))
    atomic_write_text(output / "README.md", card)
    return summary, table
