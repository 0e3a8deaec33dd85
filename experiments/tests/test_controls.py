"""The science controls of the MLP studies: scale arms, weight decay, lr grids, sweep widths, start scales, stats."""

import json
import math

import numpy as np
import pytest
import torch

from hf_varinit.calibrate import calibrate_pilot, scaled_rule
from hf_varinit.errors import ConfigError
from hf_varinit.train.study_stats import bootstrap_ci, paired_test
from hf_varinit_lab.calibrate_mlp import MLPPilot
from hf_varinit_lab.compare import run_compare
from hf_varinit_lab.controls import best_lrs, diverged_run, scale_arms
from hf_varinit_lab.datasets import load_classification
from hf_varinit_lab.mlp_train import build_mlp, train_mlp
from hf_varinit_lab.results import RunCache
from hf_varinit_lab.study_settings import CompareConfig, SweepConfig
from hf_varinit_lab.sweep import failure_cause, run_sweep

pytestmark = pytest.mark.usefixtures("one_torch_thread")

WIDTH = 256
TABLE = {"layers.0.linear": 4e-3, "layers.1.linear": 6e-3, "head": 2e-2}


@pytest.fixture(scope="module")
def wine():
    return load_classification("wine")


def _weights(model) -> dict[str, torch.Tensor]:
    return {"layers.0.linear": model.layers[0].weight.detach(),
            "layers.1.linear": model.layers[1].weight.detach(), "head": model.classifier.weight.detach()}


def test_scale_arms_give_alpha_times_vw_everywhere_and_head_only(wine):
    arms = {name: rule for name, rule, _ in scale_arms(TABLE, [0.5, 1.0, 4.0], head_only=True)}
    assert list(arms) == ["he-normal", "alpha-0.5", "alpha-1", "alpha-4", "head-alpha-0.5", "head-alpha-1",
                          "head-alpha-4"]
    for alpha in (0.5, 4.0):
        w = _weights(build_mlp(wine, 2, WIDTH, arms[f"alpha-{alpha:g}"], seed=0))
        for key, v in TABLE.items():  # the measured variance of the built weights (>= 768 entries each)
            assert float(w[key].var()) == pytest.approx(alpha * v, rel=0.12), key
        head_only = _weights(build_mlp(wine, 2, WIDTH, arms[f"head-alpha-{alpha:g}"], seed=0))
        assert float(head_only["head"].var()) == pytest.approx(alpha * TABLE["head"], rel=0.12)
        # hidden layers at He: 2 / fan_in
        assert float(head_only["layers.0.linear"].var()) == pytest.approx(2 / wine.num_features, rel=0.12)
        assert float(head_only["layers.1.linear"].var()) == pytest.approx(2 / WIDTH, rel=0.12)


def test_scale_arms_share_the_init_noise_of_a_seed(wine):
    arms = {name: rule for name, rule, _ in scale_arms(TABLE, [1.0, 4.0], head_only=True)}
    one, four = (_weights(build_mlp(wine, 2, 32, arms[a], seed=3)) for a in ("alpha-1", "alpha-4"))
    for key in TABLE:
        torch.testing.assert_close(four[key], 2 * one[key])  # sqrt(4) x the same draw
    he, head = (_weights(build_mlp(wine, 2, 32, r, seed=3)) for r in ("kaiming", arms["head-alpha-1"]))
    torch.testing.assert_close(head["layers.1.linear"], he["layers.1.linear"])


def test_weight_decay_is_applied_as_l2_in_the_gradient(wine):
    lr, wd = 0.1, 0.5
    w0 = build_mlp(wine, 2, 16, "kaiming", seed=0).classifier.weight.detach().clone()
    plain, decayed = (build_mlp(wine, 2, 16, "kaiming", seed=0) for _ in range(2))
    train_mlp(plain, wine, lr=lr, steps=1, seed=0, eval=False)
    train_mlp(decayed, wine, lr=lr, weight_decay=wd, steps=1, seed=0, eval=False)
    diff = decayed.classifier.weight.detach() - plain.classifier.weight.detach()
    torch.testing.assert_close(diff, -lr * wd * w0, rtol=1e-4, atol=1e-6)


def test_compare_weight_decay_reaches_runs_and_pilots(wine, tmp_path):
    common = dict(study="optimal", dataset="wine", seeds=[0], depth=2, width=16, steps=40, calibration_rounds=0)
    base = run_compare(CompareConfig(**common, output=""), log=lambda m: None)
    out = tmp_path / "wd"
    decayed = run_compare(CompareConfig(**common, weight_decay=0.5, output=str(out)), log=lambda m: None)
    assert [r["weight_decay"] for r in decayed.runs] == [0.5] * len(decayed.runs)
    assert decayed.runs[0]["final_train_loss"] != base.runs[0]["final_train_loss"]
    assert decayed.summary["pilots"]["0.05"]["pilot"]["head"]["v_w"] < base.summary["pilots"]["0.05"]["pilot"][
        "head"]["v_w"]
    assert "--weight-decay 0.5" in (out / "README.md").read_text()
    assert not (tmp_path / "wd.runs.jsonl").exists()  # the resume cache goes once the report is written


def test_best_lr_and_divergences_on_a_tiny_grid(wine, tmp_path):
    result = run_compare(CompareConfig(study="init", dataset="wine", seeds=[0, 1], depth=2, width=8, steps=20,
                                       lrs=[0.05, 1e4], output=str(tmp_path / "grid")), log=lambda m: None)
    best = result.summary["best_lr"]
    assert set(best) == {"kaiming-relu", "xavier-relu", "kaiming-tanh", "xavier-tanh"}
    for arm in ("kaiming-relu", "xavier-relu"):  # lr 1e4 blows every ReLU run up; 0.05 trains
        assert best[arm]["best_lr"] == 0.05 and best[arm]["diverged_runs"] == 2 and best[arm]["runs"] == 4
        assert best[arm]["diverged_lrs"] == [1e4]
    card = (tmp_path / "grid" / "README.md").read_text()
    assert "best lr per arm and divergences" in card and "Paired tests" in card


def test_best_lrs_skips_an_lr_with_a_diverged_seed():
    groups = [{"base_arm": "a", "arm": "a@0.1", "lr": 0.1, "diverged": 1, "final_train_loss_mean": 0.01,
               "n_seeds": 3},
              {"base_arm": "a", "arm": "a@0.01", "lr": 0.01, "diverged": 0, "final_train_loss_mean": 0.2,
               "n_seeds": 3},
              {"base_arm": "a", "arm": "a@0.03", "lr": 0.03, "diverged": 0, "final_train_loss_mean": 0.1,
               "n_seeds": 3}]
    assert best_lrs(groups)["a"] == {"best_lr": 0.03, "best_arm": "a@0.03", "diverged_runs": 1, "runs": 9,
                                     "diverged_lrs": [0.1]}
    assert diverged_run({"final_train_loss": 2.0}, chance=math.log(3))
    assert diverged_run({"final_train_loss": math.inf}, chance=math.log(3))
    assert not diverged_run({"final_train_loss": 1.0}, chance=math.log(3))


def test_sweep_widths_and_best_of_k_lrs(tmp_path):
    result = run_sweep(SweepConfig(datasets=["wine"], depths=[2], widths=[8, 16], stds=[1e-4, 0.3, 30.0], seeds=[0],
                                   steps=40, lrs=[0.05, 1e4], output=str(tmp_path / "sweep")), log=lambda m: None)
    assert sorted({r["width"] for r in result.rows}) == [8, 16]
    assert [(b["width"], b["he_std"]) for b in result.bands] == [(8, 0.5), (16, math.sqrt(2 / 16))]
    mid = [r for r in result.rows if r["std"] == 0.3]
    assert all(r["lr"] == 0.05 for r in mid)  # best of k kept the lr that trains
    assert "10000" in {r["diverged_lrs"] for r in mid}  # and names the lrs whose run blew up
    assert {r["cause"] for r in result.rows if r["std"] == 1e-4} == {"vanishing-at-init"}
    assert "--widths 8 16" in result.summary["command"] and "--lrs 0.05 10000" in result.summary["command"]


def test_failure_cause_names_each_edge():
    assert failure_cause("stable", False, 1.0, 1e6) == "ok"
    assert failure_cause("exploding", True, 1e7, 1e6) == "exploding-at-init"
    assert failure_cause("vanishing", False, 1e-7, 1e6) == "vanishing-at-init"
    assert failure_cause("exploding", True, 10.0, 1e6) == "sgd-divergence"
    assert failure_cause("vanishing", False, 0.5, 1e6) == "undertrained"


def test_start_scale_sets_round_zero_variances(wine):
    model = build_mlp(wine, 2, 64, "kaiming", seed=0)
    rule = scaled_rule(model, "kaiming", 2.0)
    assert rule["variances"]["head"] == pytest.approx(2 * 2 / 64)
    assert rule["variances"]["layers.0.linear"] == pytest.approx(2 * 2 / wine.num_features)
    assert scaled_rule(model, "kaiming", 1.0) == "kaiming"
    with pytest.raises(ConfigError, match="start scale"):
        scaled_rule(model, "kaiming", -1.0)
    settings = MLPPilot("wine", 2, 64, "relu", 0.05, 30, 64, 5, 0, None, 0.1)
    result = calibrate_pilot("mlp", settings, rounds=1, start_scale=0.5, log=lambda m: None)
    init = result.history[0]["init"]  # the recorded (sample) variance at step 0
    assert init["layers.1.linear"] == pytest.approx(0.5 * 2 / 64, rel=0.1)
    assert init["head"] == pytest.approx(0.5 * 2 / 64, rel=0.35)  # 3 x 64 entries: a noisy estimate


def test_paired_test_and_bootstrap():
    ref, other = [1.0, 2.0, 3.0, 4.0, 5.0], [1.5, 2.4, 3.6, 4.3, 5.7]
    out = paired_test(ref, other)
    assert out["n"] == 5 and out["mean_diff"] == pytest.approx(0.5)
    assert out["ci_lo"] < 0.5 < out["ci_hi"] and out["t_p"] < 0.01 and out["wilcoxon_p"] == pytest.approx(0.0625)
    assert paired_test([1.0, None, 3.0], [2.0, 5.0, math.inf])["n"] == 1
    assert bootstrap_ci([1.0]) == (None, None)
    lo, hi = bootstrap_ci(list(np.linspace(0, 1, 50)))
    assert lo < 0.5 < hi and hi - lo < 0.2


def test_run_cache_resumes_matching_settings_only(tmp_path):
    cache = RunCache(tmp_path / "study", {"steps": 10})
    cache.put("a|0.1|0", {"final_train_loss": 0.5})
    with (tmp_path / "study.runs.jsonl").open("a") as f:
        f.write('{"torn": ')  # a line cut short by a stop
    assert RunCache(tmp_path / "study", {"steps": 10}).get("a|0.1|0") == {"final_train_loss": 0.5}
    assert RunCache(tmp_path / "study", {"steps": 20}).get("a|0.1|0") is None
    cache.clear()
    assert not (tmp_path / "study.runs.jsonl").exists()


def test_compare_refuses_bad_control_settings():
    with pytest.raises(ConfigError, match="--head-only"):
        CompareConfig(study="optimal", head_only=True)
    with pytest.raises(ConfigError, match="alphas"):
        CompareConfig(study="optimal", alphas=[0.0, 1.0])
    with pytest.raises(ConfigError, match="--alphas"):
        CompareConfig(study="init", alphas=[1.0])
    with pytest.raises(ConfigError, match="lrs"):
        CompareConfig(lrs=[0.1, -1.0])
    assert json.loads(json.dumps(CompareConfig(study="optimal").target_losses)) == [0.01, 0.005]
