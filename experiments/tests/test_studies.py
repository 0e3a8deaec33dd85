"""The lab's MLP studies: training loop, sweep classification and bands, compare outputs, end-to-end CLIs (through
the lab's entry points into `hf-varinit`)."""

import csv
import json
import math

import numpy as np
import pytest
import yaml

from hf_varinit.cli.main import main
from hf_varinit_lab import compare, sweep
from hf_varinit_lab.datasets import load_classification
from hf_varinit_lab.mlp_train import build_mlp, init_diagnostics, run_stats, train_mlp
from hf_varinit_lab.study_settings import COMPARE_QUICK, CompareConfig

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def wine():
    return load_classification("wine")


def _front_matter(readme):
    text = readme.read_text()
    assert text.startswith("---\n")
    return yaml.safe_load(text.split("---\n")[1])


# ----------------------------------------------------------------------------- train_mlp


def test_train_mlp_is_deterministic_given_seed(wine):
    runs = [train_mlp(build_mlp(wine, 2, 16, "kaiming", seed=0), wine, steps=30, seed=s) for s in (0, 0, 1)]
    assert runs[0].losses == runs[1].losses
    assert runs[0].final_train_loss == runs[1].final_train_loss
    assert runs[0].losses != runs[2].losses  # another shuffling seed, another trajectory


def test_train_mlp_stops_and_marks_divergence(wine):
    run = train_mlp(build_mlp(wine, 3, 16, "normal:std=10", seed=0), wine, steps=50, lr=0.05)
    assert run.diverged and run.steps < 50
    assert run.final_train_loss == math.inf and run.losses[-1] == math.inf


def test_train_mlp_records_statistics_when_asked(wine):
    run = train_mlp(build_mlp(wine, 2, 16, "kaiming", seed=0), wine, steps=20, record_every=5, rule="kaiming")
    assert list(run.stats["step"]) == [0, 5, 10, 15, 20]
    stats = run_stats(run)
    assert stats.keys == ["layers.0.linear", "layers.1.linear", "head"]


def test_init_diagnostics_per_layer(wine):
    model = build_mlp(wine, 3, 16, "kaiming", seed=0)
    diag = init_diagnostics(model, wine)
    assert len(diag["act_var"]) == len(diag["act_ms"]) == 3
    assert len(diag["grad_norm"]) == 4  # three hidden layers and the head
    assert all(g > 0 for g in diag["grad_norm"])
    assert all(p.grad is None for p in model.parameters())


# ----------------------------------------------------------------------------- sweep


@pytest.mark.parametrize(
    "loss, diverged, ratio, expected",
    [
        (0.1, False, 0.5, "stable"),
        (math.inf, True, 0.5, "exploding"),
        (0.1, False, 1e7, "exploding"),  # trained, but the signal at init blew up past the bound
        (0.1, False, 1e-7, "vanishing"),
        (1.0, False, 1e-3, "vanishing"),  # did not learn, signal shrinking
        (1.0, False, 1e3, "exploding"),  # did not learn, signal growing
    ],
)
def test_classify_rule(loss, diverged, ratio, expected):
    assert sweep.classify(loss, diverged, ratio, chance_loss=math.log(3)) == expected


def test_sweep_separates_vanishing_stable_exploding(wine):
    result = sweep.run_sweep(datasets=["wine"], depths=[3], stds=[1e-4, 0.3, 10.0], seeds=[0], width=16, steps=80,
                             output=None, log=lambda m: None)
    regimes = {r["std"]: r["regime"] for r in result.rows}
    assert regimes == {1e-4: "vanishing", 0.3: "stable", 10.0: "exploding"}
    small, mid = (next(r for r in result.rows if r["std"] == s) for s in (1e-4, 0.3))
    assert small["act_ratio"] < 1e-6 < mid["act_ratio"]
    assert small["grad_norm"][0] < 1e-6 * mid["grad_norm"][0]
    assert result.bands == [{"dataset": "wine", "depth": 3, "width": 16, "band_lo": 0.3, "band_hi": 0.3,
                             "lo_cause": "vanishing-at-init", "hi_cause": "exploding-at-init", "he_std": 2 ** -1.5,
                             "stable_points": 1, "contiguous": True, "claim_points_in_band": "0/0",
                             "contains_claim": False, "overlaps_claim": False}]


def test_stability_band_needs_a_majority_and_takes_the_longest_run():
    stds = [1e-3, 1e-2, 1e-1, 1.0, 10.0]  # 1e-2 and 1e-1 are the claim's grid points
    stable_seeds = {1e-3: 0, 1e-2: 2, 1e-1: 3, 1.0: 1, 10.0: 2}  # out of 3 seeds
    rows = [{"dataset": "d", "depth": 2, "std": s, "regime": "stable" if i < n else "vanishing"}
            for s, n in stable_seeds.items() for i in range(3)]
    (band,) = sweep.stability_bands(rows, stds)
    assert (band["band_lo"], band["band_hi"]) == (1e-2, 1e-1)
    assert band["stable_points"] == 3 and band["contiguous"] is False
    assert band["contains_claim"] is True and band["claim_points_in_band"] == "2/2"


@pytest.mark.slow
def test_sweep_cli_quick_writes_a_report_folder(tmp_path):
    out = tmp_path / "sweep"
    assert main(["sweep", "--quick", "--output", str(out)]) == 0
    assert {p.name for p in out.iterdir()} == {"README.md", "results.csv", "results.md", "sweep.png", "summary.json"}
    meta = _front_matter(out / "README.md")
    assert meta["library_name"] == "hf_varinit" and "hf-varinit" in meta["tags"]
    assert "hf-varinit sweep" in (out / "README.md").read_text()
    with open(out / "results.csv") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 3 and set(sweep.CSV_COLUMNS) <= set(rows[0])
    summary = json.loads((out / "summary.json").read_text())
    assert summary["bands"][0]["band_lo"] == 0.3
    assert sum(summary["regime_counts"].values()) == 3


# ----------------------------------------------------------------------------- compare


@pytest.fixture(scope="module")
def init_compare(tmp_path_factory):
    out = tmp_path_factory.mktemp("cmp") / "init"
    result = compare.run_compare(CompareConfig(**{**COMPARE_QUICK, "study": "init", "seeds": [0, 1, 2],
                                                          "output": str(out)}), log=lambda m: None)
    return result, out


def test_compare_init_writes_the_documented_files(init_compare):
    _, out = init_compare
    assert {p.name for p in out.iterdir()} == {"README.md", "results.csv", "results.md", "curves.csv",
                                              "curves.png", "summary.json"}
    with open(out / "results.csv") as f:
        assert csv.DictReader(f).fieldnames == compare.run_columns([0.5, 0.1])
    with open(out / "curves.csv") as f:
        assert csv.DictReader(f).fieldnames == ["arm", "activation", "seed", "step", "train_loss"]
    summary = json.loads((out / "summary.json").read_text())
    assert {"study", "dataset", "config", "groups", "target_loss", "wall_seconds", "command"} <= set(summary)
    assert [g["arm"] for g in summary["groups"]] == ["kaiming-relu", "xavier-relu", "kaiming-tanh", "xavier-tanh"]
    assert all(set(compare.SUMMARY_KEYS) <= set(g) for g in summary["groups"])
    assert _front_matter(out / "README.md")["library_name"] == "hf_varinit"


def test_compare_summary_is_mean_and_sample_std_over_the_seeds(init_compare):
    result, out = init_compare
    with open(out / "results.csv") as f:
        rows = list(csv.DictReader(f))
    for group in json.loads((out / "summary.json").read_text())["groups"]:
        losses = [float(r["final_train_loss"]) for r in rows if r["arm"] == group["arm"]]
        accs = [float(r["test_accuracy"]) for r in rows if r["arm"] == group["arm"]]
        assert group["n_seeds"] == len(losses) == 3
        assert group["final_train_loss_mean"] == pytest.approx(np.mean(losses))
        assert group["final_train_loss_std"] == pytest.approx(np.std(losses, ddof=1))  # ddof 1, as every study
        assert group["test_accuracy_mean"] == pytest.approx(np.mean(accs))
        assert group["test_accuracy_std"] == pytest.approx(np.std(accs, ddof=1))


def test_compare_rejects_an_unknown_study():
    with pytest.raises(ValueError, match="valid: init, optimal"):
        CompareConfig(study="bogus")


@pytest.mark.slow
def test_compare_optimal_cli_quick_writes_pilot_and_calibration(tmp_path):
    out = tmp_path / "opt"
    assert main(["compare", "--study", "optimal", "--quick", "--output", str(out)]) == 0
    summary = json.loads((out / "summary.json").read_text())
    assert [g["arm"] for g in summary["groups"]] == ["he-normal", "optimal", "optimal-calibrated", "xavier"]
    assert set(summary["pilot"]) == {"layers.0.linear", "layers.1.linear", "head"}
    assert (out / "pilot" / "steady_state.json").is_file()
    assert (out / "calibration" / "convergence.csv").is_file()
    assert _front_matter(out / "README.md")["library_name"] == "hf_varinit"
    assert "hf-varinit compare --study optimal" in (out / "README.md").read_text()


# ----------------------------------------------------------------------------- flags, outputs, overwrite


def _flags(command):
    from hf_varinit.cli.main import build_parser

    sub = build_parser([command])._subparsers._group_actions[0].choices[command]
    return {a.dest: a for a in sub._actions if a.option_strings and a.dest != "help"}


@pytest.mark.parametrize("command, configs", [("sweep", ["study_settings.SweepConfig"]),
                                              ("compare", ["study_settings.CompareConfig"]),
                                              ("calibrate", ["CalibrateConfig", "study_settings.MLPPilotConfig"])])
def test_study_flags_are_the_config_fields_each_with_help_and_default(command, configs):
    import dataclasses
    import importlib

    def config_class(name):
        module, _, cls = name.rpartition(".")
        return getattr(importlib.import_module(f"hf_varinit_lab.{module}" if module else "hf_varinit.cli.calibrate"),
                       cls)

    flags = _flags(command)
    fields = {f.name for name in configs for f in dataclasses.fields(config_class(name))}
    assert fields <= set(flags), f"fields without a flag: {fields - set(flags)}"
    for dest, action in flags.items():
        assert action.help and "(default:" in action.help, f"--{dest} does not show its default: {action.help!r}"


def test_calibrate_help_says_which_defaults_apply_to_the_mlp_and_which_to_config(capsys):
    with pytest.raises(SystemExit):
        main(["calibrate", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert "--model mlp" in text and "with --config YAML" in text and "the MLP defaults shown do not apply" in text


def test_study_reports_default_under_runs_not_model_cards():
    from hf_varinit_lab.study_settings import SweepConfig

    assert SweepConfig().output.startswith("runs/")
    assert CompareConfig(study="optimal", dataset="wine").output == "runs/optimal-vs-he-wine"


def test_write_folder_refuses_an_existing_report_without_overwrite(tmp_path):
    from hf_varinit.errors import ReportError
    from hf_varinit.io_utils import write_folder  # the library's one folder writer, which the studies use

    dest = tmp_path / "report"
    write_folder(dest, {"README.md": lambda p: p.write_text("old")})
    with pytest.raises(ReportError, match="--overwrite"):
        write_folder(dest, {"README.md": lambda p: p.write_text("new")})
    assert (dest / "README.md").read_text() == "old"
    write_folder(dest, {"README.md": lambda p: p.write_text("new")}, overwrite=True)
    assert (dest / "README.md").read_text() == "new"
    assert [p.name for p in tmp_path.iterdir()] == ["report"]  # no temporary folder left


@pytest.mark.parametrize("argv", [["sweep", "--quick"], ["compare", "--quick"]])
def test_study_cli_refuses_to_replace_a_report_before_doing_any_work(tmp_path, capsys, argv):
    out = tmp_path / "evidence"
    out.mkdir()
    (out / "README.md").write_text("committed")
    assert main([*argv, "--output", str(out)]) == 1
    captured = capsys.readouterr()
    assert "--overwrite" in captured.err and str(out) in captured.err
    assert "done" not in captured.err  # refused up front, no arm or point was trained
    assert (out / "README.md").read_text() == "committed"
