"""Depth dynamics of Q/K/V variance by the library's one settling definition: each layer's equilibration step.

The exploratory depth-trend statistics (half-change and settle steps, early growth, Spearman tests) are the lab's:
``experiments/tests/test_dynamics_trends.py``.
"""

import numpy as np
import pytest

from hf_varinit.record.stats_file import VarianceStats
from hf_varinit.report.dynamics import LayerEquilibration, depth_dynamics
from hf_varinit.report.report import VarianceReport
from hf_varinit.report.steady_state import analyze


def _record(tau_of_layer, layers=4, steps=101, roles=("q", "k", "v"), rising=()) -> VarianceStats:
    """var(t) = 1e-3 (1 + (1 - exp(-t / tau))) per role of each layer, steps 0..1000 (a plateau: stationary), except
    the keys in ``rising``, which grow linearly to the end (never stationary)."""
    t = np.arange(steps) * 10.0
    tracked, columns = [], []
    for layer in range(layers):
        for role in roles:
            key = f"layers.{layer}.{role}"
            tracked.append({"key": key, "role": role, "layer": layer, "init_std": 0.0316})
            columns.append(1e-3 * (1 + t / t[-1]) if key in rising else
                           1e-3 * (1 + (1 - np.exp(-t / tau_of_layer(layer)))))
    var = np.stack(columns, axis=1)
    return VarianceStats(step=t.astype(np.int64), mean=np.zeros_like(var), var=var, second_moment=var,
                         tracked=tracked, metadata={"model_type": "gpt2", "source": "training"})


def test_layers_that_settle_later_equilibrate_later():
    dynamics = depth_dynamics(analyze(_record(lambda layer: 40.0 * (1 + layer))))
    steps = [d.latest for d in dynamics.layers]
    assert [d.layer for d in dynamics.layers] == [0, 1, 2, 3] and steps == sorted(steps) and len(set(steps)) == 4
    assert dynamics.roles == ("q", "k", "v") and dynamics.equilibrated == dynamics.tensors == 12


def test_the_step_is_the_steady_state_analysis_equilibration_step_of_each_role():
    tensors = analyze(_record(lambda layer: 40.0 * (1 + layer)))
    for d in depth_dynamics(tensors).layers:
        assert d.steps == {r: tensors[f"layers.{d.layer}.{r}"].equilibration_step for r in "qkv"}


def test_a_layers_step_is_the_latest_of_its_roles_and_none_when_one_has_none():
    assert LayerEquilibration(0, {"q": 10, "k": 30, "v": 20}).latest == 30
    assert LayerEquilibration(0, {"q": 10, "k": None, "v": 20}).latest is None


def test_a_tensor_that_is_not_stationary_has_no_equilibration_step():
    tensors = analyze(_record(lambda layer: 40.0, rising={"layers.1.v"}))
    assert tensors["layers.1.v"].stationary is False
    dynamics = depth_dynamics(tensors)
    assert dynamics.layers[1].steps["v"] is None and dynamics.layers[1].latest is None
    assert dynamics.equilibrated == dynamics.tensors - 1


def test_only_q_k_v_are_laid_out_and_a_model_without_them_has_no_depth_dynamics():
    mixed = depth_dynamics(analyze(_record(lambda layer: 40.0, roles=("q", "k", "v", "attn_out", "mlp_in"))))
    assert all(set(d.steps) == {"q", "k", "v"} for d in mixed.layers)
    assert depth_dynamics(analyze(_record(lambda layer: 40.0, roles=("linear",)))) is None


def test_the_card_of_a_gpt2_run_shows_its_depth_dynamics_by_the_headline_definition(tmp_path):
    card = (VarianceReport.from_stats(_record(lambda layer: 40.0 * (1 + layer))).save(tmp_path / "r")
            / "README.md").read_text()
    section = card.split("## Depth dynamics of Q/K/V variance", 1)[1].split("\n## ", 1)[0]
    assert "first recorded step after which its variance stays within ±0.1" in section
    assert "| layer | equilibration step Q | equilibration step K | equilibration step V |" in section
    assert "Every one of the 12 Q/K/V tensors equilibrated." in section
    assert "rho(depth" not in card and "Pre-registered" not in card  # the trend tests are the lab's


def test_a_card_where_no_tensor_equilibrated_says_so_without_a_table(tmp_path):
    stats = _record(lambda layer: 40.0, layers=2, rising={f"layers.{i}.{r}" for i in range(2) for r in "qkv"})
    card = (VarianceReport.from_stats(stats).save(tmp_path / "r") / "README.md").read_text()
    section = card.split("## Depth dynamics of Q/K/V variance", 1)[1].split("\n## ", 1)[0]
    assert "None of the 6 Q/K/V tensors has an equilibration step" in section and "| layer |" not in section


@pytest.mark.parametrize("roles", [("linear",), ("q", "k", "v")])
def test_a_card_without_q_k_v_or_of_a_snapshot_has_no_depth_dynamics(tmp_path, roles):
    stats = _record(lambda layer: 40.0, roles=roles)
    if roles == ("q", "k", "v"):  # one set of weights: nothing is judged
        stats = VarianceStats(step=stats.step[-1:], mean=stats.mean[-1:], var=stats.var[-1:],
                              second_moment=stats.second_moment[-1:], tracked=stats.tracked,
                              metadata={"model_type": "gpt2", "source": "checkpoint", "checkpoint": "final/"})
    card = (VarianceReport.from_stats(stats).save(tmp_path / "r") / "README.md").read_text()
    assert "Depth dynamics" not in card
