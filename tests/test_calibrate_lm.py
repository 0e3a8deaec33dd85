"""`hf-varinit calibrate --config <gpt2 yaml>`: the language-model pilot runs the pretraining loop each round."""

import csv
from pathlib import Path

import pytest

import hf_varinit as hv
from hf_varinit.cli.main import main

TEST_CONFIG = str(Path(__file__).resolve().parents[1] / "hf_varinit" / "configs" / "gpt2-tiny-test.yaml")


@pytest.mark.slow
def test_gpt2_calibration_writes_a_report_the_optimal_rule_reads(tmp_path):
    out = tmp_path / "calibrated"
    assert main(["calibrate", "--config", TEST_CONFIG, "--steps", "20", "--record-every", "2", "--rounds", "2",
                 "--tol", "1e-9", "--output", str(out)]) == 0
    rows = list(csv.DictReader((out / "convergence.csv").open()))
    assert [int(r["round"]) for r in rows] == [0, 1]
    report = hv.VarianceReport.load(out)
    assert report.model_type == "gpt2" and "layers.1.v" in report.tensors
    config = hv.load_stats(out).config
    from transformers import GPT2Config

    model = hv.from_config(GPT2Config(**{k: v for k, v in config.items() if k in GPT2Config().to_dict()}),
                           f"optimal:report={out}", seed=0)
    row = next(r for r in hv.init_plan(model, f"optimal:report={out}") if r.key == "layers.1.v")
    assert row.std ** 2 == pytest.approx(report.variances()["layers.1.v"], rel=1e-9)
