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
