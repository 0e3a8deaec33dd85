"""Schedule-aware stationarity: a curve flattened by a decayed learning rate is not a steady state.

Synthetic records under the exact schedules of ``hf-varinit pretrain`` (written out here by formula), then the
lr of every update checked against the one the real training loop logs.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest

from hf_varinit.cli.pretrain import parse_options
from hf_varinit.errors import ReportError
from hf_varinit.record.recipe import RunRecipe
from hf_varinit.record.stats_file import VarianceStats, load_stats
from hf_varinit.report.options import AnalysisOptions
from hf_varinit.report.plots import CUMULATIVE_LR_PLOT
from hf_varinit.report.report import VarianceReport
from hf_varinit.report.steady_state import analyze, cumulative_lr, known_schedule, learning_rates
from hf_varinit.train.loop import run_pretrain

TEST_CONFIG = str(Path(__file__).resolve().parents[1] / "hf_varinit" / "configs" / "gpt2-tiny-test.yaml")
PEAK, WARMUP, MAX_STEPS, EVERY = 1e-3, 30, 600, 20


def _lr(i: int, schedule: str) -> float:
    """The lr of update ``i``: linear warmup from 0, then cosine to 0 at MAX_STEPS, or constant."""
    if i < WARMUP:
        return PEAK * i / WARMUP
    if schedule == "constant":
        return PEAK
    return PEAK * 0.5 * (1 + math.cos(math.pi * (i - WARMUP) / (MAX_STEPS - WARMUP)))


def _metadata(schedule: str | None) -> dict:
    meta = {"source": "training", "lr": PEAK, "warmup_steps": WARMUP, "max_steps": MAX_STEPS}
    return meta if schedule is None else {**meta, "lr_schedule": schedule}


def _recipe(schedule: str | None) -> RunRecipe:
    return RunRecipe.from_metadata(_metadata(schedule))


def _record(values_of_step, metadata: dict) -> VarianceStats:
    """Two layers of q/k/v, each with var(t) = values_of_step(t) (x layer+1), recorded every EVERY steps."""
    step = np.arange(0, MAX_STEPS + 1, EVERY)
    tracked, columns = [], []
    for layer in range(2):
        for role in "qkv":
            tracked.append({"key": f"layers.{layer}.{role}", "role": role, "layer": layer, "init_std": 0.02})
            columns.append((layer + 1) * values_of_step(step))
    var = np.stack(columns, axis=1)
    return VarianceStats(step=step.astype(np.int64), mean=np.zeros_like(var), var=var, second_moment=var,
                         tracked=tracked, metadata=metadata)


def _cumulative(step: np.ndarray, schedule: str) -> np.ndarray:
    cum = np.concatenate([[0.0], np.cumsum([_lr(i, schedule) for i in range(MAX_STEPS)])])
    return cum[step]


def test_variance_rising_linearly_with_cumulative_lr_under_cosine_is_not_stationary():
    def rising(step):  # triples over the lr budget: a straight line against cumulative lr, never a plateau
        c = _cumulative(step, "cosine")
        return 4e-4 * (1 + 2 * c / c[-1])

    without_schedule = analyze(_record(rising, {"source": "training"}))
    assert all(a.stationary for a in without_schedule.values())  # the drift test alone is fooled
    for old_record in (_metadata(None), _metadata("cosine")):  # pretrain wrote no lr_schedule when cosine was all
        result = analyze(_record(rising, old_record))
        a = result["layers.1.q"]
        assert not any(x.stationary for x in result.values())
        assert a.drift < AnalysisOptions().drift_tol  # flat across the window, yet refused
        assert a.window_lr_fraction < 0.1 and a.window_lr_share < 0.05
        assert a.reason.startswith(f"lr decayed to {100 * a.window_lr_fraction:.3g}% of peak")
        assert "the plateau cannot be told from lr ~ 0" in a.reason
        assert a.v_w == pytest.approx(2 * 4e-4 * 3)  # not stationary: the last value, never a window mean


def test_a_plateau_reached_at_constant_lr_is_stationary():
    def plateau(step):
        return 4e-4 * (3 - 2 * np.exp(-step / 40.0))

    result = analyze(_record(plateau, _metadata("constant")))
    a = result["layers.0.v"]
    assert all(x.stationary for x in result.values()) and a.reason is None
    assert a.window_lr_fraction == pytest.approx(1.0)
    start, end = a.window
    assert a.window_lr_share == pytest.approx(PEAK * (end - start) / _cumulative(np.array([end]), "constant")[0])
    assert a.equilibration_step is not None


def test_min_lr_fraction_zero_turns_the_check_off_and_out_of_range_is_refused():
    def rising(step):
        c = _cumulative(step, "cosine")
        return 4e-4 * (1 + 2 * c / c[-1])

    assert all(a.stationary for a in analyze(_record(rising, _metadata("cosine")),
                                             AnalysisOptions(min_lr_fraction=0.0)).values())
    with pytest.raises(ReportError, match=r"min_lr_fraction=1.5 is invalid; use a number in \[0, 1\]"):
        AnalysisOptions(min_lr_fraction=1.5)


@pytest.mark.parametrize("schedule", ["cosine", "constant"])
def test_learning_rates_match_the_formula(schedule):
    lr = learning_rates(_recipe(schedule))
    assert lr.shape == (MAX_STEPS,)
    np.testing.assert_allclose(lr, [_lr(i, schedule) for i in range(MAX_STEPS)], rtol=1e-12, atol=1e-18)
    step = np.arange(0, MAX_STEPS + 1, EVERY)
    np.testing.assert_allclose(cumulative_lr(_recipe(schedule), step), _cumulative(step, schedule), rtol=1e-12)


@pytest.mark.parametrize("metadata", [
    {"source": "training", "optimizer": "sgd", "lr": 0.1, "steps": MAX_STEPS},  # an MLP study: constant lr, unsaid
    {"source": "trainer", "lr": PEAK, "max_steps": MAX_STEPS},  # a VarianceCallback: Trainer's schedule is not kept
    {**_metadata("cosine"), "source": "checkpoint"},  # a snapshot
    _metadata("linear"),  # a schedule the loop does not make
    {**_metadata("constant"), "warmup_steps": None},  # one part of the schedule missing
])
def test_records_without_a_known_schedule_keep_the_drift_test_alone(metadata):
    recipe = RunRecipe.from_metadata({k: v for k, v in metadata.items() if v is not None})
    assert not known_schedule(recipe) and learning_rates(recipe) is None
    record = _record(lambda step: 4e-4 * (2 - np.exp(-step / 40.0)), metadata)
    assert cumulative_lr(recipe, record.step) is None
    for a in analyze(record).values():
        assert a.window_lr_share is None and a.window_lr_fraction is None
        assert a.stationary is (None if metadata["source"] == "checkpoint" else True)


def test_a_record_without_its_schedule_says_unknown_and_claims_no_schedule(tmp_path):
    mlp = {"source": "training", "optimizer": "sgd", "lr": 0.05, "weight_decay": 0.01, "steps": MAX_STEPS}
    folder = VarianceReport.from_stats(_record(lambda step: 4e-4 * (3 - 2 * np.exp(-step / 40.0)), mlp)).save(
        tmp_path / "report")
    card = (folder / "README.md").read_text()
    assert "| lr schedule | unknown |" in card and "cosine" not in card
    assert "| weight decay | 0.01 |" in card and "| momentum | unknown |" in card
    assert "did not use the lr schedule" in card and CUMULATIVE_LR_PLOT not in card
    recipe = json.loads((folder / "steady_state.json").read_text())["recipe"]
    assert recipe["lr_schedule"] is None and recipe["warmup_steps"] is None and recipe["max_steps"] == MAX_STEPS
    assert VarianceReport.load(folder).recipe == RunRecipe.from_metadata(mlp)


def test_the_report_shows_the_window_lr_share_in_the_card_json_and_a_cumulative_lr_plot(tmp_path):
    stats = _record(lambda step: 4e-4 * (3 - 2 * np.exp(-step / 40.0)), _metadata("cosine"))
    folder = VarianceReport.from_stats(stats).save(tmp_path / "report")
    doc = json.loads((folder / "steady_state.json").read_text())
    share = doc["tensors"]["layers.0.q"]["window_lr_share"]
    assert 0 < share < 0.05 and doc["options"]["min_lr_fraction"] == 0.1
    card = (folder / "README.md").read_text()
    assert f"got {100 * share:.3g}% of the run's lr budget" in card
    assert "30 warmup steps, then cosine decay to 0 at step 600" in card
    assert (folder / CUMULATIVE_LR_PLOT).stat().st_size > 0 and f"]({CUMULATIVE_LR_PLOT})" in card


@pytest.mark.slow
@pytest.mark.parametrize("schedule", ["cosine", "constant"])
def test_learning_rates_match_the_lr_the_training_loop_logs(tmp_path, schedule):
    out = tmp_path / schedule
    run_pretrain(parse_options(["--config", TEST_CONFIG, "--output-dir", str(out), "--cache-dir",
                                str(tmp_path / "cache"), "--max-steps", "7", "--warmup-steps", "3",
                                "--lr-schedule", schedule, "--log-every", "1", "--checkpoint-every", "7"]))
    stats = load_stats(out / "variance.safetensors")
    assert stats.metadata["lr_schedule"] == schedule
    lr = learning_rates(stats.recipe)
    logged = {row["step"]: row["lr"] for row in map(json.loads, (out / "metrics.jsonl").read_text().splitlines())
              if "lr" in row}
    # the loop logs, after step s, the lr its scheduler gives the next update: lr[s]
    assert sorted(logged)[:6] == [1, 2, 3, 4, 5, 6]
    for s in range(1, 7):
        assert lr[s] == pytest.approx(logged[s], rel=1e-12), (schedule, s)
