"""Calibration of s0^2 = V(W): the fixed-point iteration, its stopping rule and the saved report."""

import math

import numpy as np
import pytest
import yaml

from hf_varinit.calibrate import calibrate
from hf_varinit.cli.main import main
from hf_varinit.errors import ConfigError
from hf_varinit.record.stats_file import VarianceStats
from hf_varinit.report.report import VarianceReport
from hf_varinit.studies.calibrate_mlp import calibrate_mlp

pytestmark = pytest.mark.usefixtures("one_torch_thread")


class ToyModel:
    """Stands in for a model: one tracked tensor whose init variance is the rule's."""

    def __init__(self, rule):
        self.s0_sq = 1.0 if rule == "kaiming" else rule["variances"]["w"]


def toy_pilot(a=0.2, b=0.5):
    """A pilot whose steady state is V = a + b * s0^2 (fixed point a / (1 - b)), recorded as a flat series."""

    def pilot(model):
        v = a + b * model.s0_sq
        steps = np.arange(0, 100, 10)
        sm = np.r_[model.s0_sq, np.full(len(steps) - 1, v)].astype(np.float32)[:, None]  # (S, 1)
        return VarianceStats(step=steps, mean=np.zeros_like(sm), var=sm, second_moment=sm,
                             tracked=[{"key": "w", "role": "linear", "layer": 0, "init_std": math.sqrt(model.s0_sq)}])

    return pilot


def test_calibrate_iterates_to_the_fixed_point():
    result = calibrate(ToyModel, toy_pilot(), rounds=20, tol=1e-3, log=lambda m: None)
    assert result.converged
    assert result.variances["w"] == pytest.approx(0.4, rel=2e-3)
    changes = [h["max_rel_change"] for h in result.history]
    assert changes[0] == pytest.approx(0.3)  # |0.7 - 1| / 1, against the kaiming round's init
    assert all(b < a for a, b in zip(changes, changes[1:]))
    assert changes[-1] < 1e-3 <= changes[-2]  # stops at the first round under tol


def test_calibrate_reports_non_convergence_when_rounds_run_out():
    result = calibrate(ToyModel, toy_pilot(), rounds=2, tol=1e-3, log=lambda m: None)
    assert not result.converged and len(result.history) == 2
    assert result.history[-1]["max_rel_change"] >= 1e-3


@pytest.mark.parametrize("kwargs", [{"rounds": 0}, {"tol": 0}])
def test_calibrate_rejects_bad_settings(kwargs):
    with pytest.raises(ConfigError):
        calibrate(ToyModel, toy_pilot(), **kwargs)


def test_calibration_converges_on_a_tiny_mlp_and_saves_the_last_pilot(tmp_path):
    # SGD with weight decay has an init-independent steady state, so the fixed point is reached in a few rounds.
    result = calibrate_mlp("wine", depth=2, width=16, lr=0.1, steps=600, record_every=10, weight_decay=0.1,
                           rounds=4, tol=0.05, output=tmp_path / "cal", log=lambda m: None)
    assert result.converged and len(result.history) <= 4
    assert result.history[-1]["max_rel_change"] < 0.05
    assert set(result.variances) == {"layers.0.linear", "layers.1.linear", "head"}
    assert result.variances == result.history[-1]["values"]
    saved = VarianceReport.load(tmp_path / "cal").variances()
    assert saved == pytest.approx(result.variances, rel=1e-6)  # the report is the last pilot's steady state
    card = (tmp_path / "cal" / "README.md").read_text()
    assert "Converged after" in card
    lines = (tmp_path / "cal" / "convergence.csv").read_text().splitlines()
    assert lines[0].startswith("round,max_rel_change") and len(lines) == len(result.history) + 1


@pytest.mark.slow
def test_calibrate_cli_quick_writes_a_report(tmp_path, capsys):
    assert main(["calibrate", "--quick", "--output", str(tmp_path / "q")]) == 0
    text = (tmp_path / "q" / "README.md").read_text()
    meta = yaml.safe_load(text.split("---\n")[1])
    assert meta["library_name"] == "hf_varinit"
    assert "hf-varinit calibrate --model mlp" in text
    assert (tmp_path / "q" / "convergence.md").is_file()


def test_calibrate_cli_names_the_available_pilots(tmp_path, capsys):
    assert main(["calibrate", "--model", "gpt9", "--output", str(tmp_path / "x")]) == 1
    err = capsys.readouterr().err.strip()
    assert err.startswith("hf-varinit calibrate: error:") and "available: ['gpt2', 'llama', 'mlp']" in err


def test_a_failed_save_leaves_no_folder_and_no_temporary_folder(tmp_path, monkeypatch):
    import hf_varinit.calibrate as calibrate_module

    result = calibrate(ToyModel, toy_pilot(), rounds=2, tol=1e-9, log=lambda m: None)

    def broken(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(calibrate_module, "atomic_write_json", broken)  # fails after the report files are written
    with pytest.raises(OSError, match="disk full"):
        result.save(tmp_path / "cal")
    assert list(tmp_path.iterdir()) == []


@pytest.mark.slow
def test_calibrate_cli_prints_an_existing_folder_and_never_replaces_it_without_overwrite(tmp_path, capsys):
    import json

    out = tmp_path / "q"
    assert main(["calibrate", "--quick", "--output", str(out)]) == 0
    printed = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert (tmp_path / printed["output"]).is_dir() and (out / "calibration.json").is_file()
    before = (out / "README.md").read_text()
    assert main(["calibrate", "--quick", "--output", str(out)]) == 1
    err = capsys.readouterr().err
    assert "--overwrite" in err and "calibrate: round" not in err  # refused before any pilot ran
    assert (out / "README.md").read_text() == before
    assert main(["calibrate", "--quick", "--output", str(out), "--overwrite"]) == 0
    assert sorted(p.name for p in tmp_path.iterdir()) == ["q"]  # no staging folder left next to it
