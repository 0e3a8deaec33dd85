"""The finished runs of an LM init study: read from their folders, kept in a card, restored from a card.

A run trained by the study is its folder (``metrics.jsonl``, ``variance.safetensors``, ``final/``). The card keeps
what the report needs of every run in two small files, ``runs.csv`` (one row per run, `RUN_COLUMNS`) and
``curves.csv`` (its logged train and eval loss, `CURVE_COLUMNS`), so a study can span machines: on a new one,
``hf-varinit compare --study lm ... --runs-from <card>`` writes each run the card recorded as ``record.json`` in its
run folder (`restore_runs`), where the study counts it as finished and the report reads it as a trained run.

Example:
    >>> steps_to_target(read_metrics("runs/lm/runs/gpt2/seed0/metrics.jsonl"), 5.5)  # doctest: +SKIP
    250
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from hf_varinit.errors import ConfigError, HFVarInitError, ReportError
from hf_varinit.init.rules import get_rule
from hf_varinit.io_utils import atomic_write_json, json_safe
from hf_varinit.record.stats_file import STATS_FILENAME, load_stats
from hf_varinit.report.cost import run_cost

__all__ = ["CURVES", "CURVE_COLUMNS", "METRICS", "RECORD", "RUN_COLUMNS", "canonical_spec", "curves_table", "has_curve",
           "read_metrics", "read_record", "restore_runs", "run_rows", "steps_to_target"]

METRICS = "metrics.jsonl"
CURVES = "curves.csv"
RECORD = "record.json"  # a run restored from a card, in place of its training files
RECORD_FORMAT = "hf_varinit.lm_study_run"
RUN_COLUMNS = ["arm", "spec", "seed", "run_dir", "final_step", "final_eval_loss", "steps_to_target", "tokens", "flops",
               "wall_seconds", "recorded_in"]
CURVE_COLUMNS = ["arm", "seed", "step", "loss", "eval_loss"]


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


def read_record(run_dir: str | Path) -> dict | None:
    """The ``record.json`` of a run restored from a card (None when the run was trained in its folder)."""
    path = Path(run_dir) / RECORD
    if not path.is_file():
        return None
    try:
        record = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise ConfigError(f"{path} is unreadable ({exc}); delete it and rerun with --runs-from <card>") from exc
    if not isinstance(record, dict) or record.get("format") != RECORD_FORMAT:
        raise ConfigError(f"{path} is not a run record ({RECORD_FORMAT}); delete it and rerun with --runs-from <card>")
    return record


def _record_frame(record: dict) -> pd.DataFrame:
    """A restored run's logged losses; only its final eval loss when the card kept no curve of it."""
    curve = record.get("curve") or [[record["final_step"], math.nan, record["final_eval_loss"]]]
    return pd.DataFrame(curve, columns=["step", "loss", "eval_loss"], dtype=float).astype({"step": int})


def run_rows(arms: Sequence[dict], seeds: Sequence[int], run_dir_of, target: float,
             wall_seconds: dict[str, float] | None = None) -> tuple[pd.DataFrame, dict[tuple[str, int], pd.DataFrame]]:
    """One row per (arm, seed) of finished runs (`RUN_COLUMNS`), and each run's metrics: a trained run's from its
    folder, a restored one's from its ``record.json`` (``recorded_in`` names the card).

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
            record = read_record(run_dir)
            if record is None:
                frame = read_metrics(run_dir / METRICS)
                cost = run_cost(load_stats(run_dir / STATS_FILENAME).metadata)
                reached = steps_to_target(frame, target)
            else:
                frame, cost = _record_frame(record), record
                reached = _record_reached(record, frame, target, run_dir)
            evals = frame.dropna(subset=["eval_loss"])
            rows.append({"arm": arm["label"], "spec": arm["spec"], "seed": seed, "run_dir": str(run_dir),
                         "final_step": int(frame["step"].iloc[-1]),
                         "final_eval_loss": float(evals["eval_loss"].iloc[-1]) if len(evals) else math.nan,
                         "steps_to_target": reached, "tokens": cost["tokens"], "flops": cost["flops"],
                         "wall_seconds": (wall_seconds or {}).get(f"{arm['slug']}/seed{seed}"),
                         "recorded_in": None if record is None else record["recorded_in"]})
            metrics[arm["label"], seed] = frame
    runs = pd.DataFrame(rows, columns=RUN_COLUMNS)
    runs["steps_to_target"] = runs["steps_to_target"].astype("Int64")  # an integer column with gaps
    return runs, metrics


def _record_reached(record: dict, frame: pd.DataFrame, target: float, run_dir: Path) -> int | None:
    """Steps to ``target`` of a restored run: from its curve, else the card's count for the same target."""
    if record.get("curve"):
        return steps_to_target(frame, target)
    if record.get("target_loss") != target:
        raise ReportError(f"{run_dir / RECORD}: the card kept no eval curve of this run and counted steps to "
                          f"{record.get('target_loss')}, not {target}; use --target-loss {record.get('target_loss')} "
                          "or train the run again")
    steps = record.get("steps_to_target")
    return None if steps is None else int(steps)


def has_curve(frame) -> bool:
    """Whether a run's metrics are a logged curve, not only the final eval loss of a run restored without one."""
    return len(frame) > 1


def curves_table(metrics: dict[tuple[str, int], pd.DataFrame]) -> pd.DataFrame:
    """Every run's logged train and eval loss in one long table (`CURVE_COLUMNS`): the card's ``curves.csv``. A run
    restored without a curve has no rows (a later restore then counts its steps to target from ``runs.csv``)."""
    frames = [frame.reindex(columns=["step", "loss", "eval_loss"]).assign(arm=label, seed=seed)
              for (label, seed), frame in metrics.items() if has_curve(frame)]
    return pd.concat(frames, ignore_index=True)[CURVE_COLUMNS] if frames else pd.DataFrame(columns=CURVE_COLUMNS)


# ----------------------------------------------------------------------------- a study that spans machines


def canonical_spec(spec: str | None) -> str | None:
    """A rule spec in its canonical spelling (as `get_rule` writes it back), to compare two spellings."""
    return None if spec is None else get_rule(spec).spec


def _read_card(card: Path, options: dict, steps: int) -> tuple[dict, pd.DataFrame, pd.DataFrame | None]:
    """A card's settings, runs and curves, refused unless it is a study of the same config options and steps."""
    try:
        settings = json.loads((card / "study.json").read_text(encoding="utf-8"))
        runs = pd.read_csv(card / "runs.csv")
        curves = pd.read_csv(card / CURVES) if (card / CURVES).is_file() else None
    except (OSError, ValueError) as exc:
        raise ConfigError(f"--runs-from {card}: not a readable LM study card ({exc}); give the folder of a "
                          "`compare --study lm` card (study.json, runs.csv)") from exc
    if not isinstance(settings, dict):
        raise ConfigError(f"--runs-from {card}: its study.json is not a study's settings; give the folder of a "
                          "`compare --study lm` card")
    for key, asked in (("options", options), ("steps", steps)):
        if settings.get(key) != asked:
            raise ConfigError(f"--runs-from {card}: its runs were trained with {key}={settings.get(key)!r}, this "
                              f"study asks {asked!r}; restore only from a card of the same config and --steps")
    for name, frame, needed in (("runs.csv", runs, {"arm", "spec", "seed", "final_step", "final_eval_loss",
                                                   "steps_to_target", "tokens"}),
                                (CURVES, curves, set(CURVE_COLUMNS))):
        missing = set() if frame is None else needed - set(frame)
        if missing:
            raise ConfigError(f"--runs-from {card}: {name} lacks the columns {sorted(missing)}; give the folder of "
                              "a `compare --study lm` card")
    return settings, runs, curves


def restore_runs(card: str | Path, arms: Sequence[dict], seeds: Sequence[int], steps: int, options: dict,
                 run_dir_of, is_finished) -> dict[str, float | None]:
    """Write ``record.json`` into the folder of every (arm, seed) the card recorded finished with the same spec and
    steps, and that is not finished here (a run trained here is never replaced).

    Args:
        card (`str | Path`): a ``compare --study lm`` card folder (``study.json``, ``runs.csv``, ``curves.csv``).
        arms, seeds, steps, options: the study's labelled arms, seeds, steps and config options.
        run_dir_of (`Callable[[dict, int], Path]`): the run folder of an arm and seed.
        is_finished (`Callable[[dict, int], bool]`): whether the run is already finished in this study.

    Returns:
        ``"<slug>/seed<N>"`` -> the card's wall seconds of every run restored.
    """
    card = Path(card)
    settings, runs, curves = _read_card(card, options, steps)
    restored = {}
    for arm in arms:
        for seed in seeds:
            hit = runs[(runs["arm"].astype(str) == arm["label"]) & (runs["seed"] == seed)]
            if hit.empty or pd.to_numeric(hit["final_step"], errors="coerce").iloc[0] != steps \
                    or is_finished(arm, seed):
                continue
            row = hit.iloc[0]
            try:
                same = canonical_spec(str(row["spec"])) == canonical_spec(arm["spec"])
            except HFVarInitError:
                same = False
            if not same:
                raise ConfigError(f"--runs-from {card}: arm {arm['label']!r} seed {seed} was {row['spec']!r} there, "
                                  f"{arm['spec']!r} here; give this spec another --arm-names label")
            curve = [] if curves is None else curves[(curves["arm"].astype(str) == arm["label"]) &
                                                     (curves["seed"] == seed)]
            curve = curve if has_curve(curve) else []  # a card written before bare runs were left out of its curves
            try:
                record = _record(row, curve, arm, seed, steps, settings.get("target_loss"), card)
            except (TypeError, ValueError) as exc:
                raise ConfigError(f"--runs-from {card}: the row of {arm['label']!r} seed {seed} in runs.csv or "
                                  f"{CURVES} is unreadable ({exc}); train that run again") from exc
            atomic_write_json(Path(run_dir_of(arm, seed)) / RECORD, json_safe(record), indent=None)
            restored[f"{arm['slug']}/seed{seed}"] = record["wall_seconds"]
    return restored


def _record(row: pd.Series, curve, arm: dict, seed: int, steps: int, target, card: Path) -> dict:
    """The ``record.json`` of one card row (and its curve rows)."""
    def number(key, kind):
        value = row.get(key, math.nan)
        return None if pd.isna(value) else kind(value)

    return {"format": RECORD_FORMAT, "format_version": 1, "arm": arm["label"], "spec": arm["spec"], "seed": seed,
            "steps": steps, "final_step": int(row["final_step"]), "final_eval_loss": float(row["final_eval_loss"]),
            "target_loss": target, "steps_to_target": number("steps_to_target", int), "tokens": number("tokens", int),
            "flops": number("flops", float), "wall_seconds": number("wall_seconds", float), "recorded_in": str(card),
            "curve": [] if len(curve) == 0 else curve[["step", "loss", "eval_loss"]].astype(float).values.tolist()}
