"""``hf-varinit compare --study lm``: the multi-seed LM init study, its report, its statistics and its resume.

One real study (2 arms x 2 seeds of the tiny GPT-2, 6 steps, eval every 2) is run once per module; the statistics
are checked on hand-made metrics with known answers.
"""

from __future__ import annotations

import contextlib
import io
import json
import math
import shutil
from pathlib import Path

import pandas as pd
import pytest
import yaml
from scipy import stats as scipy_stats
from transformers import AutoModelForCausalLM

from hf_varinit.cli.main import main
from hf_varinit.errors import ConfigError, RuleError
from hf_varinit.init.transfer import TransferFit
from hf_varinit.io_utils import atomic_write_text
from hf_varinit.record.from_checkpoint import stats_from_checkpoint
from hf_varinit.report.cost import pilot_cost
from hf_varinit.report.report import VarianceReport
from hf_varinit.train.lm_study import LMStudy, arm_slug, run_lm_study, study_seeds
from hf_varinit.train.lm_study_report import (
    break_even_runs,
    gap_table,
    lm_table,
    paired,
    pairwise_table,
    summarize,
)
from hf_varinit.train.lm_study_runs import RECORD, RUN_COLUMNS, steps_to_target
from hf_varinit.train.run_config import resolve_config_path
from hf_varinit.train.study_stats import t_interval, welch

STEPS, TARGET = 6, 6.0


@pytest.fixture(scope="module")
def config(tmp_path_factory) -> str:
    """The bundled gpt2-tiny-test config, evaluating every 2 steps, with a private tokenizer cache."""
    folder = tmp_path_factory.mktemp("config")
    options = yaml.safe_load(resolve_config_path("gpt2-tiny-test").read_text())
    options["data"]["cache_dir"] = str(folder / "cache")
    options["training"].update(eval_every=2, checkpoint_every=3)
    path = folder / "tiny.yaml"
    atomic_write_text(path, yaml.safe_dump(options))
    return str(path)


def study_argv(config: str, output: Path, *extra: str) -> list[str]:
    return ["compare", "--study", "lm", "--config", config, "--arms", "gpt2", "kaiming", "--seeds", "2",
            "--steps", str(STEPS), "--target-loss", str(TARGET), "--output", str(output), "--no-progress", *extra]


@pytest.fixture(scope="module")
def study(tmp_path_factory, config):
    """(output folder, printed text) of one real study."""
    output = tmp_path_factory.mktemp("study") / "lm"
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        code = main(study_argv(config, output))
    assert code == 0, out.getvalue()[-3000:]
    return output, out.getvalue()


# ----------------------------------------------------------------------------- the study end to end


@pytest.mark.slow
def test_study_writes_the_report_files_and_columns(study):
    output, _ = study
    for name in ("README.md", "summary.csv", "runs.csv", "curves.png", "study.json"):
        assert (output / name).is_file(), name
    for arm in ("gpt2", "kaiming"):
        for seed in (0, 1):
            assert (output / "runs" / arm / f"seed{seed}" / "final" / "config.json").is_file()
    runs = pd.read_csv(output / "runs.csv")
    assert list(runs.columns) == RUN_COLUMNS
    assert len(runs) == 4 and set(runs["arm"]) == {"gpt2", "kaiming"} and set(runs["seed"]) == {0, 1}
    assert (runs["final_step"] == STEPS).all() and (runs["tokens"] == STEPS * 4 * 32).all()
    assert (runs["wall_seconds"] > 0).all()
    summary = pd.read_csv(output / "summary.csv")
    for column in ("arm", "seeds", "eval_2_mean", "eval_4_mean", "final_eval_mean", "final_eval_std", "reached",
                   "steps_to_target_mean", "steps_to_target_lo", "steps_to_target_hi", "final_eval_diff",
                   "final_eval_diff_lo", "final_eval_diff_hi", "final_eval_p", "steps_p", "run_tokens",
                   "pilot_tokens", "total_tokens"):
        assert column in summary.columns, column
    assert list(summary["arm"]) == ["gpt2", "kaiming"]
    mean = runs[runs["arm"] == "kaiming"]["final_eval_loss"].mean()
    assert summary["final_eval_mean"].iloc[1] == pytest.approx(mean)


@pytest.mark.slow
def test_study_json_holds_the_settings_and_the_card_the_command(study, config):
    output, _ = study
    settings = json.loads((output / "study.json").read_text())
    assert settings["steps"] == STEPS and settings["seeds"] == [0, 1] and settings["target_loss"] == TARGET
    assert [a["label"] for a in settings["arms"]] == ["gpt2", "kaiming"]
    assert settings["config"] == config and settings["options"]["n_embd"] == 32
    assert set(settings["wall_seconds"]) == {"gpt2/seed0", "gpt2/seed1", "kaiming/seed0", "kaiming/seed1"}
    card = (output / "README.md").read_text()
    assert "hf-varinit compare --study lm" in card and "eval loss" in card and "Welch" in card
    assert "kaiming vs gpt2, final eval loss (Welch):" in card and "(paired by seed):" in card


@pytest.mark.slow
def test_the_printed_table_has_every_arm_and_the_tests(study):
    _, printed = study
    assert "| gpt2 " in printed and "| kaiming " in printed
    assert "final eval loss" in printed and "Δ final eval vs gpt2" in printed and "run + pilot" in printed
    assert json.loads(printed.strip().splitlines()[-1])["output"].endswith("lm")


@pytest.mark.slow
def test_a_rerun_trains_nothing_and_rewrites_no_run_file(study, config, capsys):
    output, _ = study
    before = {p: p.stat().st_mtime_ns for p in (output / "runs").rglob("*") if p.is_file()}
    assert main(study_argv(config, output)) == 0
    after = {p: p.stat().st_mtime_ns for p in (output / "runs").rglob("*") if p.is_file()}
    assert after == before
    runs = json.loads(capsys.readouterr().out.strip().splitlines()[-1])["runs"]
    assert set(runs.values()) == {"skipped (finished)"} and len(runs) == 4


@pytest.mark.slow
def test_other_steps_in_the_same_folder_are_refused(study, config):
    output, _ = study
    before = (output / "study.json").read_text()
    with pytest.raises(ConfigError, match="--overwrite"):
        run_lm_study(LMStudy(config=config, arms=["gpt2"], seeds=[0], steps=4, target_loss=TARGET,
                             output=str(output), progress=False))
    assert (output / "study.json").read_text() == before


@pytest.mark.slow
def test_a_finished_run_of_another_spec_is_refused_before_training(study, config, tmp_path):
    output, _ = study
    other = tmp_path / "other"
    shutil.copytree(output / "runs" / "gpt2" / "seed0", other / "runs" / "gpt2" / "seed0")
    log = other / "runs" / "gpt2" / "seed0" / "pretrain.log"
    before = log.read_text()
    with pytest.raises(ConfigError, match=r"seed0 is a finished run with init='gpt2'.*--overwrite"):
        run_lm_study(LMStudy(config=config, arms=["kaiming"], arm_names=["gpt2"], seeds=[0], steps=STEPS,
                             target_loss=TARGET, output=str(other), progress=False))
    assert log.read_text() == before and not (other / "study.json").exists()  # nothing trained, nothing written


def test_a_bad_arm_spec_fails_before_any_training(config, tmp_path):
    with pytest.raises(RuleError, match="kaimng"):
        LMStudy(config=config, arms=["gpt2", "kaimng"], seeds=[0], steps=STEPS, target_loss=TARGET,
                output=str(tmp_path / "bad"))
    assert main(study_argv(config, tmp_path / "bad", "--arms", "gpt2", "kaiming:mode=sideways")) == 1
    assert not (tmp_path / "bad").exists()


@pytest.mark.slow
def test_pilot_cost_is_the_source_runs_tokens_also_from_its_final_weights(study, tmp_path):
    output, _ = study
    run = output / "runs" / "gpt2" / "seed0"
    assert pilot_cost(f"optimal:report={run}")["tokens"] == STEPS * 4 * 32
    assert pilot_cost("kaiming") == {"report": None, "tokens": 0, "flops": 0, "note": "no pilot"}
    combined = VarianceReport.from_stats(run / "variance.safetensors")
    combined.transfer = TransferFit(widths=[32], depths=[2], sources=[str(run), str(run.parent / "seed1")], n_layer=2)
    combined.save(tmp_path / "combined")
    assert pilot_cost(f"optimal:report={tmp_path / 'combined'}")["tokens"] == 2 * STEPS * 4 * 32
    # pretrain writes the weights' training tokens into final/config.json; a report of those weights keeps them
    assert json.loads((run / "final" / "config.json").read_text())["varinit_train_tokens"] == STEPS * 4 * 32
    VarianceReport.from_stats(stats_from_checkpoint(run / "final")).save(tmp_path / "weights")
    cost = pilot_cost(f"optimal:report={tmp_path / 'weights'}")
    model = AutoModelForCausalLM.from_pretrained(run / "final")  # FLOPs: 6 N tokens, N without wte / wpe
    n = sum(p.numel() for p in model.parameters()) - model.transformer.wte.weight.numel() - \
        model.transformer.wpe.weight.numel()
    assert cost == {"report": str(tmp_path / "weights"), "tokens": STEPS * 4 * 32, "flops": 6 * n * STEPS * 4 * 32,
                    "note": "the final weights of one training run"}
    assert pilot_cost(f"optimal:report={run}")["flops"] == 6 * n * STEPS * 4 * 32
    config = json.loads((run / "final" / "config.json").read_text())  # weights saved by another tool: unknown
    del config["varinit_train_tokens"]
    shutil.copytree(run / "final", tmp_path / "other")
    (tmp_path / "other" / "config.json").write_text(json.dumps(config))
    VarianceReport.from_stats(stats_from_checkpoint(tmp_path / "other")).save(tmp_path / "other-weights")
    cost = pilot_cost(f"optimal:report={tmp_path / 'other-weights'}")
    assert cost["tokens"] is None and "unknown" in cost["note"]


@pytest.mark.slow
def test_a_multi_run_report_keeps_what_its_runs_cost_when_they_are_gone(study, tmp_path):
    output, _ = study
    runs = [tmp_path / "proxies" / f"seed{s}" for s in (0, 1)]
    for seed, run in enumerate(runs):
        shutil.copytree(output / "runs" / "gpt2" / f"seed{seed}", run)
    assert main(["report", *map(str, runs), "--output", str(tmp_path / "report")]) == 0
    spec = f"optimal:report={tmp_path / 'report'}"
    live = pilot_cost(spec)
    assert live["tokens"] == 2 * STEPS * 4 * 32 and live["flops"] > 0 and live["note"] == "2 source runs"
    shutil.rmtree(tmp_path / "proxies")  # the report travels (the hub, a commit); its runs do not
    assert pilot_cost(spec) == live
    doc = json.loads((tmp_path / "report" / "steady_state.json").read_text())
    assert doc["transfer"]["source_costs"] == [{"tokens": STEPS * 4 * 32, "flops": live["flops"] // 2}] * 2
    del doc["transfer"]["source_costs"]  # a report written before it kept them: unknown, said so
    (tmp_path / "report" / "steady_state.json").write_text(json.dumps(doc))
    cost = pilot_cost(spec)
    assert cost["tokens"] is None and cost["flops"] is None and "not all readable" in cost["note"]


# ----------------------------------------------------------------------------- the statistics, by hand


def test_welch_on_known_means_gives_the_known_t():
    test = welch([1.0, 2.0, 3.0], [2.0, 3.0, 4.0])  # means 2 and 3, variances 1: t = 1 / sqrt(2/3), df = 4
    assert test["diff"] == pytest.approx(1.0) and test["t"] == pytest.approx(1 / math.sqrt(2 / 3))
    assert test["df"] == pytest.approx(4.0)
    half = scipy_stats.t.ppf(0.975, 4) * math.sqrt(2 / 3)
    assert (test["lo"], test["hi"]) == (pytest.approx(1 - half), pytest.approx(1 + half))
    assert test["p"] == pytest.approx(2 * scipy_stats.t.sf(1 / math.sqrt(2 / 3), 4))
    assert welch([1.0], [2.0, 3.0])["p"] is None


def test_paired_test_uses_the_per_seed_differences_of_the_seeds_both_arms_ran():
    base = {0: 5.0, 1: 6.0, 2: 7.0, 3: 9.0}
    other = {0: 4.9, 1: 5.88, 2: 6.89, 4: 1.0}  # seed 3 / 4 ran in one arm only: left out
    test = paired(base, other)
    d = [-0.1, -0.12, -0.11]
    assert test["n"] == 3 and test["diff"] == pytest.approx(sum(d) / 3)
    assert test["p"] == pytest.approx(scipy_stats.ttest_rel([4.9, 5.88, 6.89], [5.0, 6.0, 7.0]).pvalue)
    assert test["lo"] < test["diff"] < test["hi"] < 0  # a consistent per-seed gain is detected
    assert welch(list(base.values())[:3], list(other.values())[:3])["p"] > 0.5  # ... which Welch cannot see
    assert paired({0: 1.0}, {0: 2.0})["p"] is None


def test_t_interval_is_mean_plus_minus_t_times_the_standard_error():
    lo, hi = t_interval([10, 20, 30])
    half = scipy_stats.t.ppf(0.975, 2) * 10 / math.sqrt(3)
    assert (lo, hi) == (pytest.approx(20 - half), pytest.approx(20 + half))
    assert t_interval([10]) == (None, None)


def metrics(evals: dict[int, float]) -> pd.DataFrame:
    return pd.DataFrame([{"step": s, "loss": v + 0.1, "eval_loss": v} for s, v in evals.items()])


def test_steps_to_target_and_a_run_that_never_reaches_it():
    arms = [{"label": "a", "spec": "gpt2", "slug": "a"}, {"label": "b", "spec": "kaiming", "slug": "b"}]
    curves = {("a", 0): {10: 5.0, 20: 4.0, 30: 3.0}, ("a", 1): {10: 5.0, 20: 4.4, 30: 3.4},
              ("b", 0): {10: 4.0, 20: 3.9, 30: 3.8}, ("b", 1): {10: 5.0, 20: 4.5, 30: 4.2}}
    frames = {k: metrics(v) for k, v in curves.items()}
    assert steps_to_target(frames["a", 0], 4.0) == 20 and steps_to_target(frames["b", 1], 4.0) is None
    runs = pd.DataFrame([{"arm": a, "spec": "x", "seed": s, "run_dir": "", "final_step": 30,
                          "final_eval_loss": c[30], "steps_to_target": steps_to_target(frames[a, s], 4.0),
                          "tokens": 100, "wall_seconds": 1.0} for (a, s), c in curves.items()], columns=RUN_COLUMNS)
    summary = summarize(runs, frames, arms, [10, 30], {"b": {"tokens": 50, "note": "one source run"}})
    a, b = summary.iloc[0], summary.iloc[1]
    half = scipy_stats.t.ppf(0.975, 1) * math.sqrt(50) / math.sqrt(2)  # steps 20 and 30: std sqrt(50), n 2
    assert a["reached"] == "2/2" and a["steps_to_target_mean"] == 25.0
    assert (a["steps_to_target_lo"], a["steps_to_target_hi"]) == (pytest.approx(25 - half), pytest.approx(25 + half))
    assert b["reached"] == "1/2" and b["steps_to_target_mean"] == 10.0  # the run that never reached it: not averaged
    assert b["steps_diff"] == pytest.approx(-15.0) and math.isnan(b["steps_p"])  # one value: no test
    assert a["eval_10_mean"] == pytest.approx(5.0) and b["final_eval_mean"] == pytest.approx(4.0)
    assert b["final_eval_diff"] == pytest.approx(4.0 - 3.2)
    assert b["final_eval_p"] == pytest.approx(scipy_stats.ttest_ind([3.8, 4.2], [3.0, 3.4], equal_var=False).pvalue)
    assert (b["run_tokens"], b["pilot_tokens"], b["total_tokens"]) == (100, 50, 150)
    table = lm_table(summary, [10, 30], 4.0)
    assert "10 (not reached 1/2)" in table and "eval @10" in table and "| 150 " in table


def test_seed_counts_and_slugs():
    assert study_seeds([3]) == [0, 1, 2] and study_seeds([4, 7]) == [4, 7]
    with pytest.raises(ConfigError):
        study_seeds([0])
    assert arm_slug("optimal:report=runs/x,fallback=gpt2") == "optimal_report_runs_x_fallback_gpt2"


def test_steps_paired_by_seed_over_seeds_that_reach_the_target_in_both_arms_and_the_break_even():
    arms = [{"label": "a", "spec": "gpt2", "slug": "a"}, {"label": "b", "spec": "optimal", "slug": "b"}]
    curves = {("a", 0): {10: 5.0, 20: 4.0, 30: 3.0}, ("a", 1): {10: 5.0, 20: 4.5, 30: 3.9},
              ("a", 2): {10: 5.0, 20: 4.8, 30: 4.5},  # seed 2 never reaches 4.0 in arm a: left out of the pairing
              ("b", 0): {10: 3.9, 20: 3.5, 30: 2.9}, ("b", 1): {10: 4.5, 20: 3.9, 30: 3.7},
              ("b", 2): {10: 4.0, 20: 3.8, 30: 3.6}}
    frames = {k: metrics(v) for k, v in curves.items()}
    runs = pd.DataFrame([{"arm": a, "spec": "x", "seed": s, "run_dir": "", "final_step": 30,
                          "final_eval_loss": c[30], "steps_to_target": steps_to_target(frames[a, s], 4.0),
                          "tokens": 300, "flops": 3000.0, "wall_seconds": 1.0} for (a, s), c in curves.items()],
                        columns=RUN_COLUMNS)
    summary = summarize(runs, frames, arms, [10, 30], {"b": {"tokens": 600, "flops": 6000.0, "note": "one"}})
    b = summary.iloc[1]
    # seeds 0 and 1 reach 4.0 in both arms: a at 20 and 30, b at 10 and 20 -> paired differences -10, -10
    assert b["paired_steps_diff"] == pytest.approx(-10.0) and pd.isna(b["paired_steps_p"])  # no spread: no test
    # the eval gap at step 10, paired over all three seeds
    assert b["gap_10_diff"] == pytest.approx(((3.9 - 5.0) + (4.5 - 5.0) + (4.0 - 5.0)) / 3)
    assert b["gap_10_p"] == pytest.approx(scipy_stats.ttest_rel([3.9, 4.5, 4.0], [5.0, 5.0, 5.0]).pvalue)
    # 10 steps saved of a 30-step run costing 3000 FLOPs: 1000 FLOPs a run; the pilot's 6000 pay after 6 runs
    assert b["break_even_runs"] == pytest.approx(6.0)
    assert summary.iloc[0]["break_even_runs"] == 0.0
    assert break_even_runs(6000.0, 3000.0, 30, +5.0) is None  # no saving: never pays
    table = gap_table(summary, [10, 30])
    assert "Δ eval @10 vs a, paired" in table and "| 6 " in table and "6e+03" in table
    unknown = summarize(runs, frames, arms, [10, 30], {"b": {"tokens": None, "flops": None, "note": "unknown"}})
    assert "pilot cost unknown" in gap_table(unknown, [10, 30])  # a saving, but nothing known to pay back
    slower = runs.assign(steps_to_target=runs["steps_to_target"].where(runs["arm"] == "a", 30))
    assert "no saving to pay with" in gap_table(summarize(slower, frames, arms, [10, 30],
                                                          {"b": {"tokens": 600, "flops": 6000.0, "note": "one"}}),
                                                [10, 30])


def test_the_other_pairs_of_arms_are_tested_paired_by_seed():
    finals = {"a": [5.0, 5.5, 6.0], "b": [4.8, 5.4, 5.7], "c": [4.6, 5.3, 5.6]}
    runs = pd.DataFrame([{"arm": arm, "seed": seed, "final_eval_loss": loss} for arm, values in finals.items()
                         for seed, loss in enumerate(values)])
    arms = [{"label": label, "spec": label} for label in finals]
    table = pairwise_table(runs, arms)
    # a is the first arm: the main table has a-b and a-c; only c - b is left
    rows = [line for line in table.splitlines() if line.startswith("| ") and "−" in line]
    assert len(rows) == 1 and rows[0].startswith("| c − b")
    p = scipy_stats.ttest_rel(finals["c"], finals["b"]).pvalue
    assert f"{-0.1333:+.4g}" in rows[0] and f"p={p:.3g}" in rows[0]
    assert pairwise_table(runs[runs["arm"] != "c"], arms[:2]) == ""  # two arms: nothing beyond the main table


@pytest.mark.slow
def test_report_only_writes_a_partial_card_of_the_seeds_every_arm_finished(study, config, tmp_path, capsys):
    output, _ = study
    whole = tmp_path / "whole"
    shutil.copytree(output, whole)
    assert main(study_argv(config, whole, "--report-only")) == 0
    assert "**Partial**" not in (whole / "README.md").read_text()  # every seed finished: the whole study's card
    partial = tmp_path / "lm"
    shutil.copytree(output, partial)
    shutil.rmtree(partial / "runs" / "kaiming" / "seed1" / "final")  # seed 1 still training in one arm
    before = (partial / "study.json").read_text()
    trained = list(partial.rglob("metrics.jsonl"))
    assert main(study_argv(config, partial, "--report-only")) == 0
    card = (partial / "README.md").read_text()
    assert "**Partial**: seeds [0] of [0, 1] finished in every arm" in card
    assert pd.read_csv(partial / "runs.csv")["seed"].tolist() == [0, 0]
    assert (partial / "study.json").read_text() == before  # the study's settings stay those of the whole study
    assert not (partial / "runs" / "kaiming" / "seed1" / "final").exists()  # nothing was trained
    assert sorted(partial.rglob("metrics.jsonl")) == sorted(trained)
    shutil.rmtree(partial / "runs" / "gpt2" / "seed0" / "final")
    assert main(study_argv(config, partial, "--report-only")) == 1
    assert "no seed has finished in every arm yet" in capsys.readouterr().err


# ----------------------------------------------------------------------------- a study that spans machines


def _card_of(output: Path, card: Path) -> Path:
    """What a user commits of a study: its card files, without the run folders."""
    card.mkdir(parents=True)
    for name in ("README.md", "runs.csv", "curves.csv", "study.json", "summary.csv"):
        shutil.copy(output / name, card / name)
    return card


@pytest.mark.slow
def test_runs_from_a_card_restore_every_finished_run_and_train_only_the_missing_seed(study, config, tmp_path):
    output, _ = study
    card = _card_of(output, tmp_path / "card")
    curves = pd.read_csv(card / "curves.csv")
    assert set(zip(curves["arm"], curves["seed"])) == {("gpt2", 0), ("gpt2", 1), ("kaiming", 0), ("kaiming", 1)}
    assert curves["eval_loss"].notna().sum() == 4 * (STEPS // 2)  # every eval of every run
    new = tmp_path / "new-machine"
    # restored first for a look (--report-only), then trained: the restored runs keep the card's wall seconds
    assert main(study_argv(config, new, "--seeds", "0", "1", "2", "--runs-from", str(card), "--report-only")) == 0
    code = main(study_argv(config, new, "--seeds", "0", "1", "2", "--runs-from", str(card)))
    assert code == 0
    for arm in ("gpt2", "kaiming"):
        for seed in (0, 1):  # restored: a record, no training files
            folder = new / "runs" / arm / f"seed{seed}"
            assert (folder / RECORD).is_file() and not (folder / "metrics.jsonl").exists()
        assert (new / "runs" / arm / "seed2" / "final" / "config.json").is_file()  # the missing seed trained
    before, after = pd.read_csv(output / "runs.csv"), pd.read_csv(new / "runs.csv")
    restored = after[after["seed"] < 2].reset_index(drop=True)
    for column in ("arm", "seed", "final_step", "final_eval_loss", "steps_to_target", "tokens", "flops",
                   "wall_seconds"):
        pd.testing.assert_series_equal(restored[column], before[column], check_dtype=False)
    assert (restored["recorded_in"] == str(card)).all() and after[after["seed"] == 2]["recorded_in"].isna().all()
    summary, whole = pd.read_csv(new / "summary.csv"), pd.read_csv(output / "summary.csv")
    assert summary["eval_2_mean"].notna().all()  # restored curves count at every horizon
    readme = (new / "README.md").read_text()
    assert "**Restored runs** (seeds 0, 1 of `gpt2`, `kaiming`)" in readme
    assert "kept no loss curve" not in readme
    assert set(json.loads((new / "study.json").read_text())["wall_seconds"]) == {
        f"{a}/seed{s}" for a in ("gpt2", "kaiming") for s in (0, 1, 2)}
    assert len(whole) == len(summary) == 2
    # the same study over seeds 0 and 1 only, restored: the card's numbers, nothing trained
    again = tmp_path / "again"
    assert main(study_argv(config, again, "--runs-from", str(card))) == 0
    pd.testing.assert_frame_equal(pd.read_csv(again / "summary.csv"), whole)


@pytest.mark.slow
def test_a_card_without_curves_restores_final_losses_only_and_a_bad_card_is_refused(study, config, tmp_path,
                                                                                      capsys):
    output, _ = study
    card = _card_of(output, tmp_path / "card")
    (card / "curves.csv").unlink()  # a card written before curves.csv existed
    new = tmp_path / "new"
    assert main(study_argv(config, new, "--runs-from", str(card))) == 0
    after, before = pd.read_csv(new / "runs.csv"), pd.read_csv(output / "runs.csv")
    assert after["final_eval_loss"].tolist() == pytest.approx(before["final_eval_loss"].tolist())
    pd.testing.assert_series_equal(after["steps_to_target"], before["steps_to_target"], check_dtype=False)
    assert "kept no loss curve of seeds 0, 1 of `gpt2`, `kaiming`" in (new / "README.md").read_text()
    # that card, restored in turn: its curves.csv holds no rows of those runs, so the steps come from its runs.csv
    assert pd.read_csv(new / "curves.csv").empty
    assert main(study_argv(config, tmp_path / "twice", "--runs-from", str(new))) == 0
    twice = pd.read_csv(tmp_path / "twice" / "runs.csv")
    pd.testing.assert_series_equal(twice["steps_to_target"], before["steps_to_target"], check_dtype=False)
    # a card written before that, whose curves.csv holds each such run's final eval loss as a one-row "curve"
    legacy = tmp_path / "legacy"
    shutil.copytree(new, legacy, ignore=shutil.ignore_patterns("runs"))
    pd.DataFrame({"arm": after["arm"], "seed": after["seed"], "step": after["final_step"], "loss": math.nan,
                  "eval_loss": after["final_eval_loss"]}).to_csv(legacy / "curves.csv", index=False)
    settings = json.loads((legacy / "study.json").read_text())
    (legacy / "study.json").write_text(json.dumps({**settings, "target_loss": 9.0}))  # reached before the end
    after.assign(steps_to_target=2).to_csv(legacy / "runs.csv", index=False)
    assert main(study_argv(config, tmp_path / "from-legacy", "--runs-from", str(legacy), "--target-loss", "9")) == 0
    assert (pd.read_csv(tmp_path / "from-legacy" / "runs.csv")["steps_to_target"] == 2).all()  # the card's count
    # another target: the card counted steps to TARGET and kept no curve to count again
    assert main(study_argv(config, tmp_path / "t", "--runs-from", str(card), "--target-loss", "9")) == 1
    assert "--target-loss 6.0" in capsys.readouterr().err
    # another step count, another spec under a label, a folder that is no card: refused, nothing trained
    for extra, message in ((["--steps", "4"], "steps=6"), (["--arms", "gpt2", "xavier", "--arm-names", "gpt2",
                                                            "kaiming"], "'kaiming' seed 0 was 'kaiming' there"),
                           (["--runs-from", str(tmp_path / "nowhere")], "not a readable LM study card")):
        where = tmp_path / f"refused{len(message)}"
        argv = study_argv(config, where, "--runs-from", str(card), *extra)
        assert main(argv) == 1
        assert message in capsys.readouterr().err
        assert not list(where.rglob("metrics.jsonl"))
    runs = pd.read_csv(card / "runs.csv")
    runs["final_eval_loss"] = runs["final_eval_loss"].astype(object)
    runs.loc[0, "final_eval_loss"] = "not a loss"  # a hand-edited card
    runs.to_csv(card / "runs.csv", index=False)
    assert main(study_argv(config, tmp_path / "edited", "--runs-from", str(card))) == 1
    assert "'gpt2' seed 0 in runs.csv or curves.csv is unreadable" in capsys.readouterr().err
