"""The lab's depth-trend statistics: which layers' Q/K/V variances move first, from synthetic records with a known
ordering; and ``scripts/dynamics_seeds.py``, which gives them with intervals over seeds."""

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from scipy.stats import spearmanr

from hf_varinit.record.stats_file import VarianceStats
from hf_varinit_lab.dynamics_trends import (
    ALPHA,
    MIN_RECORDS,
    SETTLE_BAND,
    depth_statistic,
    depth_trends,
    layer_early_growth,
    layer_settle_steps,
    moved,
    settle_step,
    spearman_test,
)

SCRIPT = Path(__file__).resolve().parents[2] / "scripts" / "dynamics_seeds.py"


def _record(rate_of_layer, layers=6, steps=50):
    """var(t) = 1 + 0.5 (1 - exp(-rate t)) per Q/K/V of each layer."""
    t = np.arange(steps) * 10.0
    tracked, columns = [], []
    for layer in range(layers):
        for role in "qkv":
            tracked.append({"key": f"layers.{layer}.{role}", "role": role, "layer": layer})
            columns.append(1e-3 * (1 + 0.5 * (1 - np.exp(-rate_of_layer(layer) * t))))
    var = np.stack(columns, axis=1).astype(np.float32)
    return VarianceStats(step=t.astype(np.int64), mean=np.zeros_like(var), var=var, second_moment=var,
                         tracked=tracked, metadata={})


def _noisy_record(relative_move, noise, layers=12, steps=61, seed=0):
    """61 records (steps 0..60): each Q/K/V var moves linearly by ``relative_move * (layer + 1) / layers`` of its
    init (a perfect depth ordering), plus independent relative noise of std ``noise`` on every record."""
    rng = np.random.default_rng(seed)
    t = np.arange(steps)
    tracked, columns = [], []
    for layer in range(layers):
        for role in "qkv":
            tracked.append({"key": f"layers.{layer}.{role}", "role": role, "layer": layer})
            trend = 1 + relative_move * (layer + 1) / layers * t / t[-1]
            columns.append(1e-3 * (trend + noise * rng.standard_normal(steps)))
    var = np.stack(columns, axis=1)
    return VarianceStats(step=t.astype(np.int64), mean=np.zeros_like(var), var=var, second_moment=var,
                         tracked=tracked, metadata={})


def _settling_record(tau_of_layer, amplitude_of_layer=lambda layer: 1.0, layers=6, steps=101, other_roles=()):
    """var(t) = 1e-3 (1 + A (1 - exp(-t / tau))) per q/k/v of each layer (and ``other_roles``), steps 0..1000."""
    t = np.arange(steps) * 10.0
    tracked, columns = [], []
    for layer in range(layers):
        for role in ("q", "k", "v", *other_roles):
            tau = tau_of_layer(layer) if role in "qkv" else tau_of_layer(layers - 1 - layer)  # others: reversed
            tracked.append({"key": f"layers.{layer}.{role}", "role": role, "layer": layer})
            columns.append(1e-3 * (1 + amplitude_of_layer(layer) * (1 - np.exp(-t / tau))))
    var = np.stack(columns, axis=1)
    return VarianceStats(step=t.astype(np.int64), mean=np.zeros_like(var), var=var, second_moment=var,
                         tracked=tracked, metadata={})


# --------------------------------------------------------------------- exploratory trends


def test_shallow_layers_moving_first_is_detected():
    trends = depth_trends(_record(lambda layer: 0.02 / (1 + layer)))
    assert trends.rho_early_change == -1.0 and trends.rho_half_change_step == 1.0
    assert "agrees with the study" in trends.verdict


def test_deep_layers_moving_first_is_detected():
    trends = depth_trends(_record(lambda layer: 0.02 / (6 - layer)), equilibration={i: 100 - i for i in range(6)})
    assert trends.rho_early_change > 0.9 and trends.rho_equilibration_step == -1.0
    assert "deep layers change faster" in trends.verdict


def test_spearman_handles_ties_and_constants():
    assert spearman_test([1, 2, 3], [5, 5, 5]) is None
    assert spearman_test([1, 2, 3, 4], [1, 1, 2, 2])[0] > 0.8


def test_a_60_step_record_moving_less_than_0_1_percent_calls_no_trend_and_says_why():
    trends = depth_trends(_noisy_record(relative_move=0.0008, noise=0.0005))
    assert trends.refused and "within the record-to-record noise" in trends.refused
    assert trends.verdict.startswith("no depth trend is called")
    for claim in ("agrees", "shallow layers expand", "deep layers settle", "disagrees"):
        assert claim not in trends.verdict


def test_too_few_records_call_no_trend_and_state_the_minimum():
    trends = depth_trends(_noisy_record(relative_move=0.5, noise=0.0, steps=MIN_RECORDS - 1))
    assert trends.refused == f"only {MIN_RECORDS - 1} records; a depth trend needs at least {MIN_RECORDS}"
    assert trends.layers == [] and "agrees" not in trends.verdict


def test_a_trend_that_is_not_significant_is_not_called_but_keeps_rho_and_p():
    # three layers, and the early change ordered only by chance: Spearman p is far above 0.05
    trends = depth_trends(_record(lambda layer: 0.02 / (1 + layer), layers=3))
    assert trends.rho_early_change == -1.0 and trends.p_early_change >= ALPHA
    assert "agrees" not in trends.verdict and "no significant depth ordering" in trends.verdict


def test_a_clear_trend_in_a_noisy_60_step_record_is_still_reported():
    trends = depth_trends(_noisy_record(relative_move=0.5, noise=0.002))  # shallow layers move least
    assert trends.refused is None
    assert trends.rho_early_change > 0.9 and trends.p_early_change < 1e-4
    assert trends.verdict.startswith("deep layers change more early on")
    assert "disagrees with the study's claim that shallow layers expand quickly" in trends.verdict


def test_partly_agrees_says_with_what():
    trends = depth_trends(_record(lambda layer: 0.02 / (1 + layer)), equilibration={i: 100 + i for i in range(6)})
    trends.rho_early_change, trends.p_early_change = 0.1, 0.8  # no early ordering, deep layers settle later
    assert trends.verdict == (
        "no significant depth ordering of the early change; deep layers settle later: partly agrees with the "
        "study's claim that shallow layers expand quickly and deep layers change slowly (the record supports "
        '"deep layers change slowly", is not significant on "shallow layers expand quickly")')


def test_moved_compares_the_total_change_with_the_successive_differences():
    rng = np.random.default_rng(0)
    assert not moved(1 + 0.01 * rng.standard_normal(60))
    assert moved(np.linspace(1, 1.001, 60))  # a smooth move, however small, stands out of zero noise
    assert not moved(np.ones(60))


# --------------------------------------------------------------------- the pre-registered depth statistic


def test_settle_step_is_where_the_series_stays_within_the_band_of_its_own_move():
    t = np.arange(101) * 10
    var = 1 + (1 - np.exp(-t / 100.0))
    # |var - var(T)| <= 0.1 |var(T) - var(0)|  <=>  exp(-t/100) - exp(-10) <= 0.1 (1 - exp(-10))
    expected = t[np.argmax(np.exp(-t / 100.0) - np.exp(-10.0) <= SETTLE_BAND * (1 - np.exp(-10.0)))]
    assert settle_step(t, var) == expected == 240
    assert settle_step(t, np.ones(101)) is None  # did not move: no settle step


def test_the_depth_statistic_recovers_a_known_settling_order():
    order = [2, 0, 5, 1, 4, 3]  # layer -> its rank of settling
    stats = _settling_record(lambda layer: 40.0 * (1 + order[layer]))
    settle = layer_settle_steps(stats)
    assert sorted(settle, key=settle.get) == sorted(range(6), key=lambda layer: order[layer])
    assert depth_statistic(stats).rho_settle == pytest.approx(spearmanr(range(6), order).statistic)
    monotone = depth_statistic(_settling_record(lambda layer: 40.0 * (1 + layer)))
    assert monotone.rho_settle == 1.0 and monotone.p_settle < ALPHA


def test_a_tensor_that_grows_10x_more_does_not_look_later():
    t = np.arange(101) * 10
    small, large = 1 + 0.2 * (1 - np.exp(-t / 80.0)), 1 + 2.0 * (1 - np.exp(-t / 80.0))
    assert settle_step(t, small) == settle_step(t, large)
    # every layer settles at the same pace, but deep layers grow 10x more than shallow ones
    stats = _settling_record(lambda layer: 80.0, amplitude_of_layer=lambda layer: 0.2 * 10 ** (layer / 5))
    assert len(set(layer_settle_steps(stats).values())) == 1 and depth_statistic(stats).rho_settle is None


def test_early_growth_says_whether_shallow_layers_expand_faster():
    fast_shallow = _settling_record(lambda layer: 40.0 * (1 + layer))
    growth = layer_early_growth(fast_shallow)
    assert growth[0] > growth[5] > 0
    statistic = depth_statistic(fast_shallow)
    assert statistic.early_step == 100 and statistic.rho_early_growth == -1.0 and statistic.p_early_growth < ALPHA
    assert statistic.rho_settle == 1.0 and statistic.p_settle < ALPHA


def test_the_depth_statistic_reads_q_k_v_only():
    qkv = _settling_record(lambda layer: 40.0 * (1 + layer))
    mixed = _settling_record(lambda layer: 40.0 * (1 + layer), other_roles=("attn_out", "mlp_in", "mlp_out"))
    assert layer_settle_steps(mixed) == layer_settle_steps(qkv)  # the reversed other tensors change nothing
    assert depth_statistic(mixed) == depth_statistic(qkv)


def test_the_depth_statistic_needs_enough_records():
    statistic = depth_statistic(_settling_record(lambda layer: 40.0, steps=MIN_RECORDS - 1))
    assert statistic.refused == f"only {MIN_RECORDS - 1} records; it needs at least {MIN_RECORDS}"
    assert statistic.rho_settle is None


@pytest.mark.slow
def test_dynamics_seeds_script_gives_per_schedule_cis_and_skips_unfinished_runs(tmp_path):
    rng = np.random.default_rng(0)
    paths = []
    for schedule in ("cosine", "constant"):
        for seed in range(3):
            stats = _settling_record(lambda layer: 40.0 * (1 + layer + 0.3 * rng.standard_normal()), layers=4)
            stats.metadata = {"source": "training", "lr": 1e-3, "warmup_steps": 10, "max_steps": 1000,
                              "lr_schedule": schedule, "seed": seed}
            run = tmp_path / schedule / f"seed{seed}"
            (run / "final").mkdir(parents=True)
            stats.save(run / "variance.safetensors")
            paths.append(str(run))
    (tmp_path / "unfinished").mkdir()
    out = tmp_path / "out"
    proc = subprocess.run([sys.executable, str(SCRIPT), *paths, str(tmp_path / "unfinished"), "--output", str(out)],
                          capture_output=True, text=True, timeout=300, env={**os.environ, "MPLBACKEND": "Agg"})
    assert proc.returncode == 0, proc.stderr[-3000:]
    seeds = pd.read_csv(out / "seeds.csv")
    assert sorted(seeds["group"].unique()) == ["constant-1000", "cosine-1000"] and len(seeds) == 6
    assert (seeds["rho_settle"] == 1.0).all()  # each seed settles in depth order
    summary = pd.read_csv(out / "summary.csv").set_index(["group", "statistic"])
    row = summary.loc[("cosine-1000", "rho_settle")]
    assert row["seeds"] == 3 and row["mean"] == 1.0 and "yes" in row["verdict"]
    growth = summary.loc[("cosine-1000", "rho_early_growth")]
    assert growth["ci_low"] <= growth["mean"] <= growth["ci_high"]
    readme = (out / "README.md").read_text()
    assert "no final/ yet" in readme and "t-interval" in readme
    for name in ("variance_vs_step_cosine-1000.png", "variance_vs_cumulative_lr_constant-1000.png"):
        assert (out / name).stat().st_size > 0 and f"]({name})" in readme
