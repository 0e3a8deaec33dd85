"""Mixed precision through the loop, on CPU: bf16 autocast, and fp16 with the grad scaler (`train.precision`).

Accelerate (1.x) turns neither autocast nor a scaler on for fp16 on a CPU; the loop gives it torch's CPU float16
autocast and ``torch.amp.GradScaler("cpu")`` (`enable_cpu_fp16`), so the fp16 path a GPU runs is the one tested
here. An inf gradient is forced with a gradient hook on one weight at one step: the scaler must skip that step,
the loop count it, the lr schedule stay put and the recorded statistics not move.

Tiny runs (2 layers, n_embd 32, block 32) of configs/gpt2-tiny-test.yaml, in-process through `run_pretrain`.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from accelerate import Accelerator

from hf_varinit.cli.pretrain import parse_options
from hf_varinit.errors import ConfigError
from hf_varinit.record.stats_file import load_stats
from hf_varinit.train import loop
from hf_varinit.train.build import FULLY_SHARD_ENV, reset_accelerate_state
from hf_varinit.train.precision import enable_cpu_fp16

ROOT = Path(__file__).resolve().parents[1]
TEST_CONFIG = str(ROOT / "hf_varinit" / "configs" / "gpt2-tiny-test.yaml")
RUN = ["--max-steps", "5", "--record-every", "1", "--log-every", "1", "--checkpoint-every", "none",
       "--eval-every", "none", "--eval-batches", "1", "--disable-tqdm"]
PROBE = "transformer.h.0.attn.c_attn"  # a Conv1D: its output dtype shows the autocast in force
INF_PARAM = "transformer.h.0.mlp.c_fc.bias"  # not a tracked weight: its inf gradient must still skip the step
INF_STEP = 3  # the optimizer step whose gradient is made inf


@pytest.fixture(scope="module")
def cache_dir(tmp_path_factory) -> str:
    return str(tmp_path_factory.mktemp("tokenizer_cache"))


def run(out: Path, cache_dir: str, precision: str, monkeypatch, inf_step: int | None = None):
    """`run_pretrain` of the tiny config; returns (result, metrics lines, output dtypes seen by the probe)."""
    dtypes: list[torch.dtype] = []
    built = loop.from_config

    def from_config(*args, **kwargs):  # the loop's model, with a dtype probe and (optionally) an inf gradient
        model = built(*args, **kwargs)
        model.get_submodule(PROBE).register_forward_hook(lambda m, i, o: dtypes.append(o.dtype))
        backwards = [0]

        def poison(grad):
            backwards[0] += 1
            return torch.full_like(grad, float("inf")) if backwards[0] == inf_step else grad

        if inf_step is not None:
            model.get_parameter(INF_PARAM).register_hook(poison)
        return model

    monkeypatch.setattr(loop, "from_config", from_config)
    result = loop.run_pretrain(parse_options(["--config", TEST_CONFIG, "--output-dir", str(out), "--cache-dir",
                                              cache_dir, "--mixed-precision", precision, *RUN]))
    lines = [json.loads(line) for line in result.metrics_path.read_text().splitlines()]
    return result, lines, dtypes


@pytest.fixture(scope="module")
def fp32(tmp_path_factory, cache_dir):
    with pytest.MonkeyPatch.context() as mp:
        return run(tmp_path_factory.mktemp("fp32"), cache_dir, "no", mp)


@pytest.mark.slow
@pytest.mark.parametrize(("precision", "dtype", "rtol"), [("bf16", torch.bfloat16, 0.03),
                                                           ("fp16", torch.float16, 0.01)])
def test_autocast_runs_through_the_loop_close_to_fp32(tmp_path, cache_dir, monkeypatch, fp32, precision, dtype,
                                                      rtol):
    result, lines, dtypes = run(tmp_path, cache_dir, precision, monkeypatch)
    assert set(dtypes) == {dtype}  # every training forward of the probe ran under autocast
    assert all(np.isfinite(x["loss"]) for x in lines) and lines[-1]["scaler_skips"] == 0
    stats, reference = load_stats(result.stats_path), load_stats(fp32[0].stats_path)
    assert stats.metadata["mixed_precision"] == precision
    np.testing.assert_array_equal(stats.var[0], reference.var[0])  # the same init, read from float32 weights
    # the same batches: every record within rtol of float32 (AdamW's first steps move every weight by ~lr)
    np.testing.assert_allclose(stats.var, reference.var, rtol=rtol)
    assert set(fp32[2]) == {torch.float32}


@pytest.mark.slow
def test_an_inf_gradient_under_fp16_is_skipped_counted_and_changes_nothing(tmp_path, cache_dir, monkeypatch, fp32):
    result, lines, _ = run(tmp_path, cache_dir, "fp16", monkeypatch, inf_step=INF_STEP)
    by_step = {x["step"]: x for x in lines}
    assert [by_step[s]["scaler_skips"] for s in range(1, 6)] == [0, 0, 1, 1, 1]
    assert all(np.isfinite(x["loss"]) for x in lines)  # the loss was finite: only the gradient was not
    # the schedule did not advance on the skipped step: its lr is the previous step's, and the run then follows
    # the fp32 run's schedule one step late
    reference_lr = [x["lr"] for x in fp32[1]]
    assert [by_step[s]["lr"] for s in range(1, 6)] == pytest.approx(reference_lr[:2] + reference_lr[1:4])
    stats = load_stats(result.stats_path)
    assert stats.step.tolist() == [0, 1, 2, 3, 4, 5]
    np.testing.assert_array_equal(stats.var[INF_STEP], stats.var[INF_STEP - 1])  # the skipped step moved nothing
    np.testing.assert_array_equal(stats.mean[INF_STEP], stats.mean[INF_STEP - 1])
    assert not np.array_equal(stats.var[INF_STEP + 1], stats.var[INF_STEP])  # and training went on after it
    assert result.nonfinite_skips == 0


def test_enable_cpu_fp16_leaves_other_precisions_alone():
    reset_accelerate_state()
    try:
        for precision in ("no", "bf16"):
            accelerator = enable_cpu_fp16(Accelerator(cpu=True, mixed_precision=precision))
            assert accelerator.scaler is None
            reset_accelerate_state()
        accelerator = enable_cpu_fp16(Accelerator(cpu=True, mixed_precision="fp16"))
        assert isinstance(accelerator.scaler, torch.amp.GradScaler) and accelerator.native_amp
    finally:
        reset_accelerate_state()


def test_fp16_with_torch_fully_shard_is_refused(monkeypatch):
    monkeypatch.setenv(FULLY_SHARD_ENV, "1")
    reset_accelerate_state()
    try:
        with pytest.raises(ConfigError, match="fp16"):
            enable_cpu_fp16(Accelerator(cpu=True, mixed_precision="fp16"))
    finally:
        reset_accelerate_state()
