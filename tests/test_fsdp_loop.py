"""The pretraining loop under FSDP2 on CPU: 2 gloo processes, torch's ``fully_shard`` (``HF_VARINIT_FULLY_SHARD=1``).

Accelerate refuses FSDP on CPU, so `build.prepare_model` shards with ``fully_shard`` itself; everything after it
(recording on every rank, the sharded checkpoint, resume, the gathered ``final/``) is the loop's own code, the
same that runs under ``accelerate launch --use_fsdp --fsdp_version 2`` on GPUs.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.distributed as dist
from safetensors.torch import load_file

from hf_varinit.cli.pretrain import parse_options
from hf_varinit.errors import ConfigError
from hf_varinit.record.stats_file import load_stats
from hf_varinit.train.build import FULLY_SHARD_ENV
from hf_varinit.train.loop import run_pretrain

ROOT = Path(__file__).resolve().parents[1]
TEST_CONFIG = str(ROOT / "hf_varinit" / "configs" / "gpt2-tiny-test.yaml")
RUN = ["--max-steps", "4", "--checkpoint-every", "2", "--record-every", "1", "--keep-last", "5", "--eval-every",
       "none", "--disable-tqdm"]
gloo = pytest.mark.skipif(not (dist.is_available() and dist.is_gloo_available()), reason="needs torch.distributed gloo")


@pytest.fixture(scope="module")
def cache_dir(tmp_path_factory) -> str:
    return str(tmp_path_factory.mktemp("tokenizer_cache"))


def torchrun(out: Path, cache_dir: str, *extra: str) -> None:
    """``torchrun --nproc_per_node 2 -m hf_varinit pretrain`` with the weights sharded by ``fully_shard``."""
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", "-m", "hf_varinit",
           "pretrain", "--config", TEST_CONFIG, "--output-dir", str(out), "--cache-dir", cache_dir, *RUN, *extra]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1", FULLY_SHARD_ENV: "1"}
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=180, cwd=ROOT)  # no hang
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]


@pytest.fixture(scope="module")
def fsdp_run(tmp_path_factory, cache_dir) -> Path:
    """A finished 2-process FSDP2 run: 4 steps, checkpoints at 2 and 4 (tests copy it before changing it)."""
    out = tmp_path_factory.mktemp("fsdp") / "run"
    torchrun(out, cache_dir)
    return out


def qkv(weights: dict[str, torch.Tensor], layer: int) -> dict[str, tuple[float, float]]:
    w, d = weights[f"transformer.h.{layer}.attn.c_attn.weight"], weights["transformer.wte.weight"].shape[1]
    return {r: tuple(x.item() for x in torch.var_mean(w[:, i * d:(i + 1) * d], correction=0)) for i, r in
            enumerate("qkv")}


@pytest.mark.slow
@pytest.mark.multiprocess
@gloo
def test_fsdp2_two_processes_match_one_process(tmp_path, cache_dir, fsdp_run):
    single = run_pretrain(parse_options(["--config", TEST_CONFIG, "--output-dir", str(tmp_path / "one"),
                                         "--cache-dir", cache_dir, *RUN]))
    sharded = load_file(fsdp_run / "final" / "model.safetensors")
    one = load_file(single.final_dir / "model.safetensors")
    assert sharded.keys() == one.keys()  # one save_pretrained of the full weights (the tied head once)
    for name in one:
        torch.testing.assert_close(sharded[name], one[name], rtol=1e-4, atol=1e-5, msg=name)
    stats, stats_one = load_stats(fsdp_run), load_stats(single.stats_path)
    assert stats.metadata["world_size"] == 2 and stats.step.tolist() == stats_one.step.tolist() == [0, 1, 2, 3, 4]
    np.testing.assert_allclose(stats.var[0], stats_one.var[0], rtol=1e-6)  # the same init (shards: float64 sums)
    np.testing.assert_allclose(stats.var, stats_one.var, rtol=1e-5)
    for layer in (0, 1):  # the record of the last step is the final weights' (computed from shards)
        for role, (var, mean) in qkv(sharded, layer).items():
            j = stats.index(f"layers.{layer}.{role}")
            assert stats.var[-1, j] == pytest.approx(var, rel=1e-6) and stats.mean[-1, j] == pytest.approx(
                mean, rel=1e-5, abs=1e-9)
    shards = sorted(p.name for p in (fsdp_run / "checkpoints" / "step_2" / "sharded_state").glob("*.distcp"))
    assert shards == ["__0_0.distcp", "__1_0.distcp"]  # each rank wrote its own shards
    assert not list(fsdp_run.glob("**/variance.safetensors.*"))  # no stray second writer


@pytest.mark.slow
@pytest.mark.multiprocess
@gloo
def test_fsdp2_resume_from_a_sharded_checkpoint_is_bit_identical(tmp_path, cache_dir, fsdp_run):
    out = shutil.copytree(fsdp_run, tmp_path / "run")
    weights, stats = load_file(out / "final" / "model.safetensors"), load_stats(out)
    shutil.rmtree(out / "checkpoints" / "step_4")  # as if killed after the checkpoint at step 2
    shutil.rmtree(out / "final")
    torchrun(out, cache_dir, "--resume")
    again, stats2 = load_file(out / "final" / "model.safetensors"), load_stats(out)
    assert weights.keys() == again.keys() and all(torch.equal(weights[k], again[k]) for k in weights)
    assert stats2.step.tolist() == stats.step.tolist()
    np.testing.assert_array_equal(stats2.var, stats.var)


def test_fully_shard_without_launched_processes_is_refused(tmp_path, cache_dir, monkeypatch):
    monkeypatch.setenv(FULLY_SHARD_ENV, "1")
    with pytest.raises(ConfigError, match=f"{FULLY_SHARD_ENV}=1 .* torchrun"):
        run_pretrain(parse_options(["--config", TEST_CONFIG, "--output-dir", str(tmp_path), "--cache-dir", cache_dir,
                                    *RUN]))
