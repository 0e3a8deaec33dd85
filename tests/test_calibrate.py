"""Calibration of s0^2 = V(W): the fixed-point iteration, its stopping rule and the saved report."""

import math

import numpy as np
import pytest

from hf_varinit.calibrate import calibrate
from hf_varinit.errors import ConfigError, WriteError
from hf_varinit.record.stats_file import VarianceStats

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


def test_a_failed_save_leaves_no_folder_and_no_temporary_folder(tmp_path, monkeypatch):
    import hf_varinit.calibrate as calibrate_module

    result = calibrate(ToyModel, toy_pilot(), rounds=2, tol=1e-9, log=lambda m: None)

    def broken(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(calibrate_module, "atomic_write_json", broken)  # fails after the report files are written
    with pytest.raises(WriteError, match=r"cannot write the folder .*cal: disk full"):  # the library's one line
        result.save(tmp_path / "cal")
    assert list(tmp_path.iterdir()) == []
