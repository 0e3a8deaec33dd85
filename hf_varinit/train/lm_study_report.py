"""The report of the LM init study (``hf-varinit compare --study lm``): per-run metrics -> tables, tests, card, plot.

Three steps, as the runs are recorded: `hf_varinit.train.lm_study_runs.run_rows` reads each finished run into one
row per (arm, seed); `summarize` turns them into one row per arm (eval loss at fixed steps, steps to the
target loss with a 95 % t-interval, Welch t-tests against the first arm, the pilot's cost in tokens);
`write_lm_report` writes ``README.md``, ``summary.csv``, ``runs.csv``, ``curves.csv`` and ``curves.png`` (each file
atomically).
The statistics are `hf_varinit.train.study_stats` (std over seeds with ddof 1); the card, the table and the figure
are `hf_varinit.train.study_report`, shared with the lab's MLP studies; the pilot's cost is `hf_varinit.report.cost`.

Example:
    >>> paired({0: 5.0, 1: 6.0}, {0: 4.9, 1: 5.8})["n"]  # doctest: +SKIP
    2
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from hf_varinit.io_utils import atomic_write, atomic_write_text
from hf_varinit.report.tables import format_cell
from hf_varinit.train.lm_study_runs import CURVES, curves_table, has_curve
from hf_varinit.train.study_report import figure, seed_band, study_card, summary_table
from hf_varinit.train.study_stats import LEVEL, mean_std, paired_test, t_interval, welch

__all__ = ["gap_table", "lm_table", "paired", "pairwise_table", "summarize", "write_lm_report"]

SMOOTH = 5  # train-loss curves: trailing mean over this many log lines
ALPHA = 1 - LEVEL  # 95 % intervals; "lower" / "higher" verdicts need p < ALPHA


# ----------------------------------------------------------------------------- horizons


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


def _reached_by_seed(runs: pd.DataFrame) -> dict[int, float]:
    return {int(seed): float(step) for seed, step in zip(runs["seed"], runs["steps_to_target"]) if not pd.isna(step)}


def break_even_runs(pilot_flops: float | None, run_flops: float | None, run_steps: int,
                    steps_diff: float | None) -> float | None:
    """How many runs a report must initialise before its pilot pays: pilot FLOPs / FLOPs saved per run, the saving
    being the paired steps-to-target difference at the run's FLOPs per step. None without a pilot cost, a run cost
    or a saving (a report that saves no steps never pays); 0 for a rule that reads no report."""
    if pilot_flops == 0:
        return 0.0
    if not pilot_flops or not run_flops or not run_steps or pd.isna(steps_diff) \
            or steps_diff >= 0:
        return None
    return pilot_flops / (-steps_diff * run_flops / run_steps)


def paired(baseline: Mapping[int, float], other: Mapping[int, float]) -> dict[str, float | None]:
    """The paired t-test over the seeds both arms ran (every arm of a seed shares its data order): ``diff`` (mean
    of other - baseline per seed), its 95 % t-interval (``lo``, ``hi``), ``n`` seeds and the two-sided ``p``; no
    interval and no p without a spread to test against."""
    test = paired_test(baseline, other)
    out = {"diff": test["mean_diff"], "lo": None, "hi": None, "n": test["n"], "p": None}
    if test["t_lo"] is not None and test["t_lo"] != test["t_hi"]:
        out.update(lo=test["t_lo"], hi=test["t_hi"], p=test["t_p"])
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
            row[f"eval_{h}_mean"], row[f"eval_{h}_std"] = mean_std(values)
        row["final_eval_mean"], row["final_eval_std"] = mean_std(mine["final_eval_loss"])
        reached = [int(s) for s in mine["steps_to_target"].dropna()]
        row["reached"] = f"{len(reached)}/{len(mine)}"
        row["steps_to_target_mean"] = float(np.mean(reached)) if reached else None
        row["steps_to_target_lo"], row["steps_to_target_hi"] = t_interval(reached)
        final = welch(first["final_eval_loss"], mine["final_eval_loss"])
        steps = welch([float(s) for s in first["steps_to_target"].dropna()], [float(s) for s in reached])
        pairs = paired(dict(zip(first["seed"], first["final_eval_loss"])), dict(zip(mine["seed"],
                                                                                     mine["final_eval_loss"])))
        # steps to target paired by seed: only seeds that reach the target in both arms (the others are counted
        # in `reached`, never imputed)
        paired_steps = paired(_reached_by_seed(first), _reached_by_seed(mine))
        for h in horizons:  # the eval-loss gap at each horizon, paired by seed
            gap = paired({s: eval_at(metrics[arms[0]["label"], s], h) for s in first["seed"]},
                         {s: eval_at(metrics[arm["label"], s], h) for s in mine["seed"]})
            row.update({f"gap_{h}_diff": gap["diff"], f"gap_{h}_lo": gap["lo"], f"gap_{h}_hi": gap["hi"],
                        f"gap_{h}_p": gap["p"]})
        for prefix, test in (("final_eval", final), ("steps", steps), ("paired_eval", pairs),
                             ("paired_steps", paired_steps)):
            row.update({f"{prefix}_diff": test["diff"], f"{prefix}_diff_lo": test["lo"],
                        f"{prefix}_diff_hi": test["hi"], f"{prefix}_p": test["p"]})
        tokens = mine["tokens"].dropna()
        row["run_tokens"] = int(tokens.mean()) if len(tokens) else None
        flops = mine["flops"].dropna()
        row["run_flops"] = float(flops.mean()) if len(flops) else None
        pilot = pilots.get(arm["label"], {"tokens": 0, "flops": 0, "note": "no pilot"})
        row["pilot_tokens"], row["pilot_flops"], row["pilot_note"] = pilot["tokens"], pilot.get("flops"), pilot["note"]
        row["pilot_report"] = pilot.get("report")
        known = row["run_tokens"] is not None and pilot["tokens"] is not None
        row["total_tokens"] = row["run_tokens"] + pilot["tokens"] if known else None
        row["break_even_runs"] = break_even_runs(row["pilot_flops"], row["run_flops"], int(mine["final_step"].max()),
                                                 row["paired_steps_diff"])
        rows.append(row)
    return pd.DataFrame(rows)


# ----------------------------------------------------------------------------- rendering


def _interval(mean, lo, hi, reached: str, digits: int = 4) -> str:
    n, total = map(int, reached.split("/"))
    missed = f"not reached {total - n}/{total}"
    if pd.isna(mean):
        return missed
    text = format_cell(float(mean), digits) + ("" if pd.isna(lo) else
                                               f" [{format_cell(lo, digits)}, {format_cell(hi, digits)}]")
    return text + ("" if n == total else f" ({missed})")


def _tokens(value) -> str:
    return "unknown" if pd.isna(value) else f"{int(value):,}"


def _test_text(diff, lo, hi, p) -> str:
    """A difference with its 95 % interval and p: ``+0.1 [-0.2, +0.4], p=0.5``."""
    if pd.isna(diff):
        return "n/a"
    if pd.isna(p):
        return f"{diff:+.4g} (no test)"
    return f"{diff:+.4g} [{lo:+.4g}, {hi:+.4g}], p={p:.3g}"


def _test_cell(row, prefix: str) -> str:
    return _test_text(row[f"{prefix}_diff"], row[f"{prefix}_diff_lo"], row[f"{prefix}_diff_hi"], row[f"{prefix}_p"])


def lm_table(summary: pd.DataFrame, horizons: Sequence[int], target: float) -> str:
    """The per-arm table of the card and the console (`hf_varinit.train.study_report.summary_table`)."""
    shown = [h for h in horizons if h != horizons[-1]] if horizons else []
    first = summary["arm"].iloc[0]
    tests = (("final_eval", "final eval"), ("paired_eval", "final eval, paired by seed,"), ("steps", "steps"),
             ("paired_steps", "steps, paired by seed,"))
    rows = []
    for i, (_, r) in enumerate(summary.iterrows()):
        row = {**r.to_dict(), "steps": _interval(r["steps_to_target_mean"], r["steps_to_target_lo"],
                                                 r["steps_to_target_hi"], r["reached"], 5)}
        row.update({f"{prefix}_test": "baseline" if i == 0 else _test_cell(r, prefix) for prefix, _ in tests})
        row.update({f"{key}_text": _tokens(r[key]) for key in ("run_tokens", "pilot_tokens", "total_tokens")})
        rows.append(row)
    columns = [("arm", "arm"), ("seeds", "seeds"), *((f"eval_{h}", f"eval @{h}") for h in shown),
               ("final_eval", "final eval loss"), ("steps", f"steps to eval ≤ {target:g} [95% CI]"),
               *((f"{prefix}_test", f"Δ {name} vs {first} [95% CI], p") for prefix, name in tests),
               ("run_tokens_text", "run tokens"), ("pilot_tokens_text", "pilot tokens"),
               ("total_tokens_text", "run + pilot")]
    return summary_table(rows, columns)


def _flops(value) -> str:
    return "unknown" if pd.isna(value) else f"{float(value):.3g}"


def _break_even_text(even, pilot_flops) -> str:
    if not pd.isna(even):
        return "0 (no pilot)" if even == 0 else f"{even:.3g}"
    unknown = pd.isna(pilot_flops)
    return "pilot cost unknown" if unknown else "no saving to pay with"


def gap_table(summary: pd.DataFrame, horizons: Sequence[int]) -> str:
    """Per arm against the first: the eval-loss gap at each horizon paired by seed (mean, 95 % CI, p), the cost in
    FLOPs, and the break-even: how many runs the report must initialise before its pilot pays."""
    first = summary["arm"].iloc[0]
    rows = []
    for _, r in summary.iloc[1:].iterrows():
        row = {"arm": r["arm"], "run_flops": _flops(r.get("run_flops")), "pilot_flops": _flops(r.get("pilot_flops"))}
        for h in horizons:
            row[f"gap_{h}"] = _test_cell({"gap_diff": r[f"gap_{h}_diff"], "gap_p": r[f"gap_{h}_p"],
                                          "gap_diff_lo": r[f"gap_{h}_lo"], "gap_diff_hi": r[f"gap_{h}_hi"]}, "gap")
        row["break_even"] = _break_even_text(r.get("break_even_runs"), r.get("pilot_flops"))
        rows.append(row)
    columns = [("arm", "arm"), *((f"gap_{h}", f"Δ eval @{h} vs {first}, paired") for h in horizons),
               ("run_flops", "run FLOPs"), ("pilot_flops", "pilot FLOPs"), ("break_even", "break-even runs")]
    return summary_table(rows, columns) if rows else ""


def pairwise_table(runs: pd.DataFrame, arms: Sequence[dict]) -> str:
    """Every pair of arms after the first (the main table tests each against the first): the later arm minus the
    earlier, final eval loss paired by seed [95 % CI], p."""
    labels = [a["label"] for a in arms]
    final = {label: dict(zip(runs.loc[runs["arm"] == label, "seed"], runs.loc[runs["arm"] == label,
                                                                             "final_eval_loss"])) for label in labels}
    rows = []
    for i, earlier in enumerate(labels[1:], start=1):
        for later in labels[i + 1:]:
            test = paired(final[earlier], final[later])
            rows.append({"pair": f"{later} − {earlier}", "n": test["n"],
                         "test": _test_text(test["diff"], test["lo"], test["hi"], test["p"])})
    columns = [("pair", "arms"), ("n", "seeds"), ("test", "Δ final eval, paired by seed [95% CI], p")]
    return summary_table(rows, columns) if rows else ""


def verdicts(summary: pd.DataFrame, target: float) -> list[str]:
    """One plain sentence per arm and test against the first arm, stated from the numbers."""
    first, lines = summary.iloc[0], []
    for _, row in summary.iloc[1:].iterrows():
        for prefix, what, unit in (("final_eval", "final eval loss (Welch)", ""),
                                   ("paired_eval", "final eval loss (paired by seed)", ""),
                                   ("steps", f"steps to eval ≤ {target:g} (Welch)", " steps"),
                                   ("paired_steps", f"steps to eval ≤ {target:g} (paired by seed, seeds that reach "
                                                    "it in both arms)", " steps")):
            diff, p = row[f"{prefix}_diff"], row[f"{prefix}_p"]
            head = f"{row['arm']} vs {first['arm']}, {what}:"
            if pd.isna(diff):
                lines.append(f"{head} not comparable (reached by {row['reached']} vs {first['reached']} seeds).")
            elif pd.isna(p):
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
    fig = figure(11, 4.2)
    ax_train, ax_eval = fig.subplots(1, 2)
    for i, arm in enumerate(arms):
        frames = [f for (label, _), f in metrics.items() if label == arm["label"] and has_curve(f)]
        if not frames:
            continue
        for ax, column, smooth in ((ax_train, "loss", SMOOTH), (ax_eval, "eval_loss", 1)):
            series = [f.dropna(subset=[column]).set_index("step")[column].rolling(smooth, min_periods=1).mean()
                      for f in frames]
            table = pd.concat(series, axis=1, join="inner")  # (steps every run logged, seeds)
            if table.empty:
                continue
            spread = [mean_std(values) for values in table.to_numpy()]
            seed_band(ax, table.index, [m for m, _ in spread], [s for _, s in spread], color=f"C{i % 10}",
                      label=f"{arm['label']} (n={len(frames)})", marker="o" if column == "eval_loss" else None, ms=3)
    ax_train.set(title=f"train loss (mean of {SMOOTH} log lines), mean ± std over seeds", xlabel="step",
                 ylabel="loss")
    ax_eval.set(title="eval loss (held-out split), mean ± std over seeds", xlabel="step", ylabel="loss")
    ax_train.legend(fontsize=8)
    fig.savefig(path, dpi=110, format="png")


def _runs_text(pairs: list[tuple[str, int]]) -> str:
    """``seeds 0, 1 of a and b; seed 2 of c``: (arm, seed) pairs grouped by the seeds each arm has."""
    by_arm: dict[str, list[int]] = {}
    for arm, seed in pairs:
        by_arm.setdefault(arm, []).append(int(seed))
    groups: dict[tuple[int, ...], list[str]] = {}
    for arm, seeds in by_arm.items():
        groups.setdefault(tuple(sorted(seeds)), []).append(f"`{arm}`")
    return "; ".join(f"seed{'s' * (len(seeds) > 1)} {', '.join(map(str, seeds))} of {', '.join(arms)}"
                     for seeds, arms in groups.items())


def _restored_text(runs: pd.DataFrame, metrics: dict[tuple[str, int], pd.DataFrame]) -> str:
    """The card's line on runs taken from an earlier card's record (``--runs-from``) rather than trained here."""
    taken = runs[runs["recorded_in"].notna()]
    if taken.empty:
        return ""
    pairs = list(zip(taken["arm"], taken["seed"]))
    bare = [(a, s) for a, s in pairs if not has_curve(metrics[a, s])]
    cards = ", ".join(f"`{c}`" for c in sorted(set(taken["recorded_in"])))
    return (f"\n**Restored runs** ({_runs_text(pairs)}): trained earlier, on another machine, and taken from the "
            f"record of {cards} (its `runs.csv` and `curves.csv`, `--runs-from`), not trained again." +
            (f" That record kept no loss curve of {_runs_text(bare)}: they count with their final eval loss and "
             "steps to target only, and draw no curve." if bare else "") + "\n")


def _card(settings: dict, table: str, lines: list[str], horizons: Sequence[int], gaps: str = "",
          pairs: str = "", restored: str = "") -> str:
    arms = "\n".join(f"- `{a['label']}`: `{a['spec']}`" for a in settings["arms"])
    partial = (f"\n**Partial**: {settings['partial']}; one seed is an anecdote. The rest run with the command "
               "below.\n" if settings.get("partial") else "") + restored
    body = f"""
# LM init study: {', '.join(a['label'] for a in settings['arms'])}

Each arm is one init rule; each (arm, seed) is one ordinary `hf-varinit pretrain` run of the config
`{settings['config']}` for {settings['steps']} steps (runs in `runs/<arm>/seed<N>/`). Seeds: {settings['seeds']}.

{arms}
{partial}
## Results

Mean ± std over seeds. Losses are the **eval loss** (mean token cross-entropy on the held-out split of the
corpus, which no run trains on). Steps to target: the first eval step with eval loss ≤ {settings['target_loss']:g};
mean and 95 % t-interval over the seeds that reached it (runs that never did are counted, not averaged in).
Δ: the arm minus the first arm, Welch's t-test (unequal variances), 95 % interval of the difference, two-sided p.
Paired by seed: every arm of a seed shares its data order, so the per-seed differences are tested (paired t-test).
Steps, paired by seed: over the seeds that reach the target in both arms; a seed that misses it in either arm is
left out of that test (and counted in "not reached"), never imputed.
Tokens: a run's training tokens; pilot: the tokens of the run(s) that made the report the rule reads (paid once;
for a report of final weights, the tokens that trained them, "unknown" when the checkpoint does not say); run +
pilot: the compute-fair total. FLOPs: 6·N·tokens, N the parameters without the token and position embedding
tables, for the run and for each source run of the pilot (a narrower proxy costs less per token). Break-even: pilot
FLOPs / FLOPs saved per run, the saving being the paired steps-to-target difference (none: no saving to pay with).
Eval steps reported: {', '.join(map(str, horizons)) or 'none in common'}.

{table}

{gaps}

{f"The other pairs of arms:{chr(10)}{chr(10)}{pairs}{chr(10)}" if pairs else ""}
{chr(10).join(f'- {line}' for line in lines) or '- one arm only: nothing to compare'}

![curves](curves.png)

Per arm: `summary.csv`; per run (final eval loss, steps to target, tokens, wall seconds): `runs.csv`; every
run's logged train and eval loss: `curves.csv`; the settings: `study.json`.

## Regenerate

```bash
{settings['command']}
```
"""
    return study_card(tags=["initialization", "language-model", "init-study"], datasets=[], body=body)


def write_lm_report(output: Path, settings: dict, runs: pd.DataFrame,
                    metrics: dict[tuple[str, int], pd.DataFrame], pilots: dict[str, dict]) -> tuple[pd.DataFrame, str]:
    """Write ``README.md``, ``summary.csv``, ``runs.csv``, ``curves.csv`` and ``curves.png`` into ``output`` (each
    atomically, after everything is computed); returns the summary and the printed table."""
    arms = settings["arms"]
    horizons = sorted(set(settings.get("horizons") or default_horizons(metrics)) |
                      {int(runs["final_step"].max())})
    summary = summarize(runs, metrics, arms, horizons, pilots)
    table = lm_table(summary, horizons, settings["target_loss"])
    final = int(runs["final_step"].max())
    gap_horizons = sorted({h for h in settings.get("horizons") or () if h in horizons} | {final})
    card = _card(settings, table, verdicts(summary, settings["target_loss"]), horizons,
                 gap_table(summary, gap_horizons), pairwise_table(runs, arms), _restored_text(runs, metrics))
    atomic_write(output / "curves.png", lambda tmp: curves_plot(metrics, arms, tmp))
    atomic_write_text(output / "summary.csv", summary.to_csv(index=False))
    atomic_write_text(output / "runs.csv", runs.to_csv(index=False))
    atomic_write_text(output / CURVES, curves_table(metrics).to_csv(index=False))
    atomic_write_text(output / "README.md", card)
    return summary, table
