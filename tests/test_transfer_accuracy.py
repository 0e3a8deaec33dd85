"""`scripts/transfer_accuracy.py --rescore`: the committed transfer cards recompute to what they say."""

import shutil
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

ROOT = Path(__file__).resolve().parents[1]
CARD = ROOT / "model_cards" / "gpt2-transfer-accuracy-w256"


def median_errors(path: Path) -> dict[tuple[str, str], float]:
    """(mode, role) -> median error % of a ``baselines.md`` table."""
    errors = {}
    for line in path.read_text().splitlines():
        cells = [c.strip() for c in line.strip("|").split("|")]
        if len(cells) == 6 and cells[0].startswith(("copy", "fit", "fan-in")):
            errors[cells[0], cells[1]] = float(cells[5])
    return errors


def test_rescore_rebuilds_copy_and_fit_pooled_from_the_committed_rows(tmp_path):
    card = tmp_path / CARD.name
    shutil.copytree(CARD, card)
    cmd = [sys.executable, str(ROOT / "scripts" / "transfer_accuracy.py"), "--rescore", str(card), "--target-width",
           "256"]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr[-2000:]
    errors = median_errors(card / "baselines.md")
    # copy from the 128-wide proxy: its V(W) unchanged; fit-pooled: one shrunk exponent per role from the same rows
    assert errors["copy from w128", "v"] == pytest.approx(3.8, abs=0.05)
    assert errors["fit-pooled over w64,w128", "q"] == pytest.approx(6.94, abs=0.05)
    assert errors["fit-pooled over w64,w128", "mlp_out"] == errors["copy from w128", "mlp_out"]  # shrunk to alpha 0
    assert errors == median_errors(CARD / "baselines.md")  # the committed card is current
    assert len(pd.read_csv(card / "per_tensor.csv")) == len(pd.read_csv(CARD / "per_tensor.csv"))


def _pretrain(out: Path, n_embd: int) -> Path:
    cmd = [sys.executable, "-m", "hf_varinit", "pretrain", "--config", "gpt2-tiny-test", "--n-embd", str(n_embd),
           "--output-dir", str(out), "--disable-tqdm"]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr[-2000:]
    return out


def test_rules_score_a_report_spec_and_the_init_baseline_is_the_targets_own_rule(tmp_path):
    """``--rules SPEC``: a report read through the optimal rule at the target's size (here the target's own run,
    which must predict itself exactly); a spec that reads no report is refused by name."""
    target = _pretrain(tmp_path / "w64", 64)
    script = [sys.executable, str(ROOT / "scripts" / "transfer_accuracy.py")]
    spec = f"optimal:report={target},nonstationary=last"
    proc = subprocess.run([*script, "--target", str(target), "--rules", spec,
                           "--output", str(tmp_path / "card")], capture_output=True, text=True, timeout=600, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr[-2000:]
    rows = pd.read_csv(tmp_path / "card" / "per_tensor.csv")
    own = rows[rows["mode"] == spec]
    assert len(own) > 0 and own["abs_log_error"].max() < 1e-6
    assert set(rows.loc[rows["mode"] == "init variance", "note"]) == {"gpt2 rule"}
    assert spec in (tmp_path / "card" / "verdicts.md").read_text()
    proc = subprocess.run([*script, "--target", str(target), "--rules", "kaiming", "--output", str(tmp_path / "x")],
                          capture_output=True, text=True, timeout=600, cwd=ROOT)
    assert proc.returncode != 0 and "'kaiming'" in proc.stderr and not (tmp_path / "x").exists()
