"""Depth dynamics: which layers' Q/K/V variances move first, from a synthetic record with a known ordering."""

import numpy as np

from hf_varinit.record.stats_file import VarianceStats
from hf_varinit.report.dynamics import depth_dynamics, spearman


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
