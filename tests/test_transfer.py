"""Width transfer of V(W) in the optimal rule: fan-in scaling, the multi-run power-law fit, depth and width together."""

from __future__ import annotations

import json
import math
import re

import numpy as np
import pytest
from transformers import GPT2Config, LlamaConfig

import hf_varinit as hv
from hf_varinit.cli.main import main as cli_main
from hf_varinit.errors import ReportError
from hf_varinit.init.roles import tracked_roles
from hf_varinit.init.transfer import shrunk_exponent
from hf_varinit.record.recipe import RunRecipe
from hf_varinit.record.stats_file import save_stats
from hf_varinit.report.multi_run import combine_reports
from hf_varinit.report.next_model import recipe_mismatch, spec_recipe_note
from hf_varinit.report.report import VarianceReport
from hf_varinit.report.transfer import fit_power_law

ALPHA, C = 0.8, 0.5  # the synthetic law V(W) = C * fan_in^-ALPHA * (1 + layer)
RECIPE = {"optimizer": "adamw", "lr": 1e-3, "lr_schedule": "cosine", "warmup_steps": 10, "source": "training"}


def gpt2(width: int, layers: int = 2, **changes) -> GPT2Config:
    sizes = dict(n_layer=layers, n_embd=width, n_head=4, vocab_size=100, n_positions=1024, bos_token_id=0,
                 eos_token_id=0)
    return GPT2Config(**{**sizes, **changes})


def llama(width: int, layers: int = 2) -> LlamaConfig:
    return LlamaConfig(num_hidden_layers=layers, hidden_size=width, num_attention_heads=4, num_key_value_heads=2,
                       intermediate_size=2 * width, vocab_size=100)


def law(entry: dict) -> float:
    return C * entry["fan_in"] ** -ALPHA * (1 + (entry["layer"] or 0))


def recorded(config, folder, value=law, steps: int = 20, **metadata):
    """A run folder whose every tracked tensor sits at ``value(tracked entry)`` from the first record."""
    recorder = hv.VarianceRecorder(hv.from_config(config, "kaiming", seed=0), every=1, rule="kaiming")
    tracked = recorder.tracked()
    plateau = np.array([[value(t) for t in tracked]] * steps, dtype=np.float64)
    folder.mkdir(parents=True)
    save_stats(folder, step=np.arange(steps) * 10, mean=np.zeros_like(plateau), var=plateau, second_moment=plateau,
               tracked=tracked, metadata={**recorder.metadata(), **RECIPE, **metadata})
    return folder


def report_of(config, folder, value=law, **metadata):
    return VarianceReport.from_stats(recorded(config, folder / "run", value, **metadata)).save(folder / "report")


def plan(config, spec: str) -> dict:
    return {r.key: r for r in hv.init_plan(hv.from_config(config, seed=0), spec)}


def fans(config) -> dict[str, int]:
    return {e.key: e.fan_in for e, _ in tracked_roles(hv.from_config(config, seed=0))}


# --- the fit ------------------------------------------------------------------------------------------------------
def test_power_law_fit_recovers_the_exponent_and_extrapolates():
    fit = fit_power_law([64, 128], [C * 64 ** -ALPHA, C * 128 ** -ALPHA])
    assert fit.alpha == pytest.approx(ALPHA) and fit.c == pytest.approx(C)
    assert fit.predict(512) == pytest.approx(C * 512 ** -ALPHA)
    assert max(map(abs, fit.residuals)) < 1e-12


def test_two_width_report_fits_alpha_and_predicts_a_third_width(tmp_path):
    narrow = VarianceReport.from_stats(recorded(gpt2(32), tmp_path / "w32"))
    wide = VarianceReport.from_stats(recorded(gpt2(64), tmp_path / "w64"))
    combined = combine_reports([narrow, wide])
    assert combined is wide and combined.transfer.widths == [32, 64]
    assert combined.transfer.fits["layers.1.q"].alpha == pytest.approx(ALPHA)
    assert combined.transfer.fits["embedding"].alpha == pytest.approx(0, abs=1e-12)  # same V(W) at both widths
    target = gpt2(128)
    rows = plan(target, f"optimal:report={combined.save(tmp_path / 'r')},width-transfer=fit")
    for key, fan in fans(target).items():
        if key.startswith("layers."):
            expected = C * fan ** -ALPHA * (1 + int(key.split(".")[1]))
            assert rows[key].std ** 2 == pytest.approx(expected, rel=1e-6), key
    assert rows["layers.0.mlp_out"].note == "fit alpha=0.8 over widths 32,64; layer 0"


def test_embeddings_are_fitted_against_the_width_not_their_vocabulary_fan_in(tmp_path):
    def width_law(config):  # embeddings shrink with the width; everything else follows the fan-in law
        return lambda t: C * config.n_embd ** -ALPHA if t["role"] in ("embedding", "position") else law(t)

    runs = [VarianceReport.from_stats(recorded(gpt2(w), tmp_path / f"w{w}", width_law(gpt2(w)))) for w in (32, 64)]
    combined = combine_reports(runs)
    fit = combined.transfer.fits["embedding"]
    assert (fit.variable, fit.fan_in) == ("width", [32, 64]) and fit.alpha == pytest.approx(ALPHA)
    rows = plan(gpt2(128), f"optimal:report={combined.save(tmp_path / 'r')},width-transfer=fit")
    for key in ("embedding", "position"):  # extrapolated to width 128, not held at the proxies' mean
        assert rows[key].std ** 2 == pytest.approx(C * 128 ** -ALPHA, rel=1e-6), key
    assert rows["embedding"].note == "fit alpha=0.8 vs width over widths 32,64"
    reloaded = VarianceReport.load(tmp_path / "r").transfer.fits["embedding"]
    assert reloaded.variable == "width"


def test_shrunk_exponent_keeps_a_clear_trend_and_zeroes_noise():
    assert shrunk_exponent([0.8, 0.81, 0.79, 0.8])[0] == pytest.approx(0.8, rel=1e-3)
    assert shrunk_exponent([0.5, -0.5, 0.4, -0.3])[0] == 0.0  # mean 0.025, within 2 standard errors of 0
    alpha, mean, se = shrunk_exponent([0.3, 0.1, 0.2, 0.2])  # mean 0.2, se 0.041: shrunk by (2 se / mean)^2
    assert se == pytest.approx(0.0408, abs=1e-4) and alpha == pytest.approx(0.2 * (1 - (2 * se / 0.2) ** 2))
    assert shrunk_exponent([0.7]) == (0.7, 0.7, 0.0)  # one tensor (an embedding): its own exponent


def test_fit_pooled_follows_a_clean_law_and_copies_the_nearest_width_where_layers_disagree(tmp_path):
    clean = combine_reports([VarianceReport.from_stats(recorded(gpt2(w), tmp_path / f"c{w}")) for w in (32, 64)])
    target = gpt2(128)
    rows = plan(target, f"optimal:report={clean.save(tmp_path / 'clean')},width-transfer=fit-pooled")
    for key, fan in fans(target).items():
        if key.startswith("layers."):  # every layer's exponent is ALPHA: no spread, nothing shrunk
            expected = C * fan ** -ALPHA * (1 + int(key.split(".")[1]))
            assert rows[key].std ** 2 == pytest.approx(expected, rel=1e-6), key
    assert rows["layers.0.q"].note.startswith("fit-pooled alpha=0.8 (role mean 0.8 +- 0 se) from the run at fan_in 64")

    def disagreeing(t):  # layer 0 rises with the width, layer 1 falls as fast: the role's mean exponent is 0
        return C * t["fan_in"] ** (0.5 if t["layer"] == 0 else -0.5) if t["layer"] is not None else 1e-3

    runs = [VarianceReport.from_stats(recorded(gpt2(w), tmp_path / f"d{w}", disagreeing)) for w in (32, 64)]
    report = combine_reports(runs).save(tmp_path / "disagree")
    pooled = plan(target, f"optimal:report={report},width-transfer=fit-pooled")
    per_tensor = plan(target, f"optimal:report={report},width-transfer=fit")
    copied = plan(target, f"optimal:report={report},width-transfer=copy")
    for key in ("layers.0.q", "layers.1.q", "layers.1.mlp_out"):
        assert pooled[key].std == pytest.approx(copied[key].std, rel=1e-9), key  # alpha 0: the 64-wide run's V(W)
        assert per_tensor[key].std != pytest.approx(copied[key].std, rel=1e-3), key


# --- fan-in -------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("make", [gpt2, llama], ids=["gpt2", "llama-gqa"])
def test_fan_in_transfer_scales_by_the_ratio_of_fans(tmp_path, make):
    source, target = make(32), make(64)
    report = report_of(source, tmp_path)
    src_fans, dst_fans = fans(source), fans(target)
    v = VarianceReport.load(report).variances()
    rows = plan(target, f"optimal:report={report},width-transfer=fan-in")
    for key in v:
        assert rows[key].std ** 2 == pytest.approx(v[key] * src_fans[key] / dst_fans[key], rel=1e-6), key
    # hand-computed fans: Q/K/V read the hidden size, the MLP output its intermediate size (GQA k/v too)
    assert (src_fans["layers.0.k"], dst_fans["layers.0.k"]) == (32, 64)
    assert (src_fans["layers.0.mlp_out"], dst_fans["layers.0.mlp_out"]) == ((128, 256) if make is gpt2 else (64, 128))
    assert rows["layers.0.k"].std ** 2 == pytest.approx(v["layers.0.k"] / 2, rel=1e-6)
    assert rows["layers.1.q"].note == "fan-in alpha=1 from width 32; layer 1"


def test_depth_and_width_compose(tmp_path):
    report = report_of(gpt2(32, layers=2), tmp_path, lambda t: 1e-3 * (1 + (t["layer"] or 0)))
    rows = plan(gpt2(64, layers=4), f"optimal:report={report},width-transfer=fan-in")
    for j in range(4):  # layer j of 4 sits at source position j/3 of layers 0..1; Q's fan_in doubles
        assert rows[f"layers.{j}.q"].std ** 2 == pytest.approx(1e-3 * (1 + j / 3) * 32 / 64, rel=1e-6)
    assert rows["layers.1.q"].note == "fan-in alpha=1 from width 32; layers 0-1 (w=0.33)"
    assert rows["embedding"].std ** 2 == pytest.approx(1e-3)  # fan_in = vocabulary, unchanged


def test_width_mismatch_without_the_option_names_both_widths_and_the_option(tmp_path):
    report = report_of(gpt2(32), tmp_path)
    with pytest.raises(ReportError, match=r"hidden size 32, but the model has 64.*width-transfer=fan-in"):
        plan(gpt2(64), f"optimal:report={report}")


def test_width_transfer_still_refuses_another_vocabulary(tmp_path):
    report = report_of(gpt2(32), tmp_path)
    with pytest.raises(ReportError, match="vocab_size=100, but the model has vocab_size=120"):
        plan(gpt2(64, vocab_size=120), f"optimal:report={report},width-transfer=fan-in")


def test_fit_on_a_one_width_report_is_a_report_error_naming_the_fix(tmp_path):
    report = report_of(gpt2(32), tmp_path)
    with pytest.raises(ReportError, match=r"no width fit.*hf-varinit report RUN_A RUN_B.*width-transfer=fan-in"):
        plan(gpt2(64), f"optimal:report={report},width-transfer=fit")


def test_bad_width_transfer_value_is_a_rule_error():
    with pytest.raises(hv.RuleError, match="width_transfer"):
        hv.get_rule("optimal:report=x,width-transfer=sqrt")


# --- multi-run reports --------------------------------------------------------------------------------------------
def test_multi_run_report_cli_end_to_end_and_plan_shows_the_exponent(tmp_path, capsys):
    runs = [recorded(gpt2(w), tmp_path / f"w{w}") for w in (32, 64)]
    out = tmp_path / "transfer"
    assert cli_main(["report", *map(str, runs), "--output", str(out)]) == 0
    doc = json.loads((out / "steady_state.json").read_text())
    assert doc["transfer"]["widths"] == [32, 64] and doc["transfer"]["sources"] == list(map(str, runs))
    fit = doc["transfer"]["fits"]["layers.0.v"]
    assert fit["alpha"] == pytest.approx(ALPHA) and fit["fan_in"] == [32, 64] and len(fit["residuals"]) == 2
    assert doc["config"]["n_embd"] == 64 and doc["recipe"]["optimizer"] == "adamw"  # the widest run's table
    assert "Width and depth transfer" in (out / "README.md").read_text()
    plan(gpt2(64), f"optimal:report={out}")  # no transfer: the report is the widest run's
    capsys.readouterr()
    assert cli_main(["plan", "--model", "gpt2", "--n-layer", "2", "--n-embd", "128", "--n-head", "4",
                     "--vocab-size", "100", "--rule", f"optimal:report={out},width-transfer=fit",
                     "--optimizer", "sgd"]) == 0
    printed = capsys.readouterr().out
    assert "measured under adamw, lr 0.001, cosine schedule, 10 warmup steps" in printed
    assert "fit alpha=0.8 over widths 32,64; layer 1" in printed
    assert "V(W) under AdamW and under SGD are different objects" in printed
    expected_std = math.sqrt(C * 128 ** -ALPHA * 2)
    q1 = next(line for line in printed.splitlines() if line.startswith("transformer.h.1.attn.c_attn") and " q " in line)
    assert float(re.search(r"normal\s+(\S+)", q1).group(1)) == pytest.approx(expected_std, rel=1e-5)


def test_multi_run_report_refuses_runs_that_differ_in_more_than_width(tmp_path):
    a = VarianceReport.from_stats(recorded(gpt2(32), tmp_path / "a"))
    b = VarianceReport.from_stats(recorded(gpt2(64, vocab_size=120), tmp_path / "b"))
    with pytest.raises(ReportError, match="config entry 'vocab_size'"):
        combine_reports([a, b])
    c = VarianceReport.from_stats(recorded(llama(64), tmp_path / "c"))
    with pytest.raises(ReportError, match="model_type 'gpt2' and 'llama'"):
        combine_reports([a, c])
    d = VarianceReport.from_stats(recorded(gpt2(64), tmp_path / "d", lr=3e-3))
    with pytest.raises(ReportError, match="lr 0.001 vs 0.003"):
        combine_reports([a, d])


def test_depth_only_runs_make_no_fit_but_a_report(tmp_path):
    shallow = VarianceReport.from_stats(recorded(gpt2(32, layers=2), tmp_path / "d2"))
    deep = VarianceReport.from_stats(recorded(gpt2(32, layers=4), tmp_path / "d4"))
    combined = combine_reports([shallow, deep])
    assert combined is deep and combined.transfer.depths == [2, 4] and combined.transfer.fits == {}


# --- the recipe ---------------------------------------------------------------------------------------------------
def test_recipe_is_kept_and_a_mismatch_is_named(tmp_path):
    # a pretrain record from before lr_schedule was written (cosine was then the only schedule)
    report = VarianceReport.load(report_of(gpt2(32), tmp_path, lr_schedule=None, max_steps=190))
    assert report.recipe == RunRecipe("adamw", 1e-3, "cosine", warmup_steps=10, max_steps=190)
    assert recipe_mismatch(report, optimizer="adamw", lr=1e-3) is None
    note = recipe_mismatch(report, optimizer="sgd")
    assert "measured under adamw" in note and "theory is about SGD" in note
    assert "lr 0.01" in recipe_mismatch(report, lr=1e-2)


def test_pretrain_notes_a_report_measured_under_another_optimizer():
    note = spec_recipe_note("optimal:report=gpt2-12l-tiny-qkv-dynamics", "sgd", 1e-3)
    assert note is not None and "sgd" in note and "adamw" in note
    assert spec_recipe_note("optimal:report=gpt2-12l-tiny-qkv-dynamics", "adamw", 1e-3) is None
    assert spec_recipe_note("kaiming", "sgd", 0.1) is None
