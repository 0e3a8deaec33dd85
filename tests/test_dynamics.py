"""Depth dynamics: which layers' Q/K/V variances move first, from a synthetic record with a known ordering."""

import numpy as np

from hf_varinit.record.stats_file import VarianceStats
from hf_varinit.report.dynamics import ALPHA, MIN_RECORDS, depth_dynamics, moved, spearman


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


def test_shallow_layers_moving_first_is_detected():
    dynamics = depth_dynamics(_record(lambda layer: 0.02 / (1 + layer)))
    assert dynamics.rho_early_change == -1.0 and dynamics.rho_half_change_step == 1.0
    assert "agrees with the study" in dynamics.verdict


def test_deep_layers_moving_first_is_detected():
    dynamics = depth_dynamics(_record(lambda layer: 0.02 / (6 - layer)), equilibration={i: 100 - i for i in range(6)})
    assert dynamics.rho_early_change > 0.9 and dynamics.rho_equilibration_step == -1.0
    assert "deep layers change faster" in dynamics.verdict


def test_spearman_handles_ties_and_constants():
    assert spearman([1, 2, 3], [5, 5, 5]) is None
    assert spearman([1, 2, 3, 4], [1, 1, 2, 2]) > 0.8


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


def test_a_60_step_record_moving_less_than_0_1_percent_calls_no_trend_and_says_why():
    stats = _noisy_record(relative_move=0.0008, noise=0.0005)
    dynamics = depth_dynamics(stats)
    assert dynamics.refused and "within the record-to-record noise" in dynamics.refused
    assert dynamics.verdict.startswith("no depth trend is called")
    for claim in ("agrees", "shallow layers expand", "deep layers settle", "disagrees"):
        assert claim not in dynamics.verdict
    assert "no depth trend is called" in dynamics.to_markdown()


def test_too_few_records_call_no_trend_and_state_the_minimum():
    stats = _noisy_record(relative_move=0.5, noise=0.0, steps=MIN_RECORDS - 1)
    dynamics = depth_dynamics(stats)
    assert dynamics.refused == f"only {MIN_RECORDS - 1} records; a depth trend needs at least {MIN_RECORDS}"
    assert dynamics.layers == [] and "agrees" not in dynamics.verdict


def test_a_trend_that_is_not_significant_is_not_called_and_reports_rho_and_p():
    # three layers, and the early change ordered only by chance: Spearman p is far above 0.05
    dynamics = depth_dynamics(_record(lambda layer: 0.02 / (1 + layer), layers=3))
    assert dynamics.rho_early_change == -1.0 and dynamics.p_early_change >= ALPHA
    assert "agrees" not in dynamics.verdict and "no significant depth ordering" in dynamics.verdict
    text = dynamics.to_markdown()
    assert "rho(depth, early change by step 50) = -1.00 (p = " in text and "not significant" in text


def test_a_clear_trend_in_a_noisy_60_step_record_is_still_reported():
    stats = _noisy_record(relative_move=0.5, noise=0.002)  # shallow layers move least: a clear, noisy trend
    dynamics = depth_dynamics(stats)
    assert dynamics.refused is None
    assert dynamics.rho_early_change > 0.9 and dynamics.p_early_change < 1e-4
    assert dynamics.verdict.startswith("deep layers change more early on")
    assert "disagrees with the study's claim that shallow layers expand quickly" in dynamics.verdict


def test_partly_agrees_says_with_what():
    dynamics = depth_dynamics(_record(lambda layer: 0.02 / (1 + layer)),
                              equilibration={i: 100 + i for i in range(6)})
    dynamics.rho_early_change, dynamics.p_early_change = 0.1, 0.8  # no early ordering, deep layers settle later
    assert dynamics.verdict == (
        "no significant depth ordering of the early change; deep layers settle later: partly agrees with the "
        "study's claim that shallow layers expand quickly and deep layers change slowly (the record supports "
        '"deep layers change slowly", is not significant on "shallow layers expand quickly")')


def test_moved_compares_the_total_change_with_the_successive_differences():
    rng = np.random.default_rng(0)
    assert not moved(1 + 0.01 * rng.standard_normal(60))
    assert moved(np.linspace(1, 1.001, 60))  # a smooth move, however small, stands out of zero noise
    assert not moved(np.ones(60))
