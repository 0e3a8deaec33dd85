"""The lab's MLP calibration pilot: the fixed point on a tiny MLP, ``hf-varinit calibrate --model mlp`` (through the
lab's ``hf_varinit.pilots`` entry point) and its report folder."""

import pytest
import yaml

from hf_varinit.cli.main import main
from hf_varinit.report.report import VarianceReport
from hf_varinit_lab.calibrate_mlp import calibrate_mlp

pytestmark = pytest.mark.usefixtures("one_torch_thread")


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
