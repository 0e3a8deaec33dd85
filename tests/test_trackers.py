"""--report-to: the metrics and every record's per-layer Q/K/V variance reach the tracker, read back with its own
reader (TensorBoard's `EventAccumulator`); ``metrics.jsonl`` stays one compact line per logged step.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator  # the dev extra installs it

from hf_varinit.cli.pretrain import parse_options
from hf_varinit.record.stats_file import load_stats
from hf_varinit.train.loop import run_pretrain

ROOT = Path(__file__).resolve().parents[1]
TEST_CONFIG = str(ROOT / "hf_varinit" / "configs" / "gpt2-tiny-test.yaml")


@pytest.fixture(scope="module")
def tensorboard_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("tb")
    result = run_pretrain(parse_options([
        "--config", TEST_CONFIG, "--output-dir", str(out), "--cache-dir", str(out / "cache"), "--max-steps", "6",
        "--record-every", "2", "--log-every", "3", "--checkpoint-every", "none", "--report-to", "tensorboard",
    ]))
    events = EventAccumulator(str(out / "hf_varinit"))
    events.Reload()
    return result, events


def test_every_record_s_qkv_variance_reaches_tensorboard(tensorboard_run):
    result, events = tensorboard_run
    stats = load_stats(result.stats_path)
    tags = set(events.Tags()["scalars"])
    for layer in (0, 1):
        for role in ("q", "k", "v"):
            key = f"layers.{layer}.{role}"
            scalars = events.Scalars(f"variance/{key}")
            assert [s.step for s in scalars] == stats.step.tolist() == [0, 2, 4, 6]
            expected = stats.series(key, "var")
            assert [s.value for s in scalars] == pytest.approx(expected.tolist(), rel=1e-6)
    assert {"loss", "lr", "eval_loss"} <= tags
    assert not any(t.startswith("variance/") and t.split("/")[1].split(".")[-1] not in "qkv" for t in tags)


def test_metrics_jsonl_keeps_variances_out(tensorboard_run):
    result, _ = tensorboard_run
    lines = [json.loads(line) for line in result.metrics_path.read_text().splitlines()]
    assert [x["step"] for x in lines] == [3, 6]  # log_every 3 (6 also evaluates); record steps add no line
    assert not any(k.startswith("variance/") for x in lines for k in x)
