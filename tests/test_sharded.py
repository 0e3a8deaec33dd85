"""`moments.var_mean`: statistics from shards equal the statistics of the full weights.

The shard arithmetic is checked in one process by splitting tensors by hand (even and uneven, every slice
kind, shard boundaries inside a slice or a head); the real path by a 2-process FSDP2 run on CPU (gloo).
"""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
from transformers import GPT2LMHeadModel

from hf_varinit.init.roles import ColumnBlock, HeadInterleaved, RowBlock, Slice, TensorRole, tracked_roles
from hf_varinit.record.moments import is_sharded, local_moments, var_mean
from hf_varinit.record.recorder import VarianceRecorder

ROOT = Path(__file__).resolve().parents[1]


def _role(sl: Slice | None, shape) -> TensorRole:
    return TensorRole("w", "k", "q", 0, sl, 1, 1, tuple(shape))


def _from_shards(entry: TensorRole, full: torch.Tensor, sizes: list[int], dim: int = 0) -> torch.Tensor:
    """[var, mean] from hand-made shards of ``full`` along ``dim``: local moments summed, as the all_reduce does."""
    total, offset = torch.zeros(3, dtype=torch.float64), 0
    for local in torch.split(full, sizes, dim=dim):
        total += local_moments(entry, local, dim, offset, tuple(full.shape))
        offset += local.shape[dim]
    count, s, ss = total.tolist()
    mean = s / count
    return torch.tensor([ss / count - mean * mean, mean], dtype=torch.float64)


def _exact(entry: TensorRole, full: torch.Tensor) -> torch.Tensor:
    var, mean = torch.var_mean(entry.view(full).double(), correction=0)
    return torch.stack([var, mean])


SPLITS = {"even": [48, 48], "uneven": [49, 47], "three": [40, 40, 16], "empty shard": [96, 0]}
SLICES = {
    "whole": None,
    "rows q": RowBlock(0, 32),
    "rows k (straddles)": RowBlock(32, 64),
    "interleaved k": HeadInterleaved(index=1, parts=3, num_heads=4),
    "interleaved v": HeadInterleaved(index=2, parts=3, num_heads=4),
}


@pytest.mark.parametrize("split", SPLITS.values(), ids=SPLITS.keys())
@pytest.mark.parametrize("sl", SLICES.values(), ids=SLICES.keys())
@pytest.mark.parametrize("ndim", [1, 2])
def test_row_shards_match_full(sl, split, ndim):
    torch.manual_seed(0)
    full = torch.randn(96, 5) * 0.3 + 0.1 if ndim == 2 else torch.randn(96) * 0.3 + 0.1
    entry = _role(sl, full.shape)
    torch.testing.assert_close(_from_shards(entry, full, split), _exact(entry, full), rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("split", [[16, 16], [17, 15], [32, 0]])
@pytest.mark.parametrize("start", [0, 32, 64])
def test_cols_slice_on_row_shards_and_column_shards(split, start):
    """GPT-2 ``c_attn``: Q/K/V column blocks of a (in, 3*out) weight sharded on rows (FSDP2) or on columns."""
    torch.manual_seed(1)
    full = torch.randn(32, 96) * 0.02
    entry = _role(ColumnBlock(start, start + 32), full.shape)
    torch.testing.assert_close(_from_shards(entry, full, split, dim=0), _exact(entry, full), rtol=1e-10, atol=1e-14)
    col_split = [50, 46]  # column shards: the slice runs along the sharded axis
    torch.testing.assert_close(_from_shards(entry, full, col_split, dim=1), _exact(entry, full), rtol=1e-10,
                               atol=1e-14)


def test_naive_slicing_of_a_shard_would_be_wrong():
    """The guard on the mapping: applying the global slice to the local rows gives other numbers."""
    torch.manual_seed(2)
    full = torch.randn(96, 4) + torch.arange(96.0).unsqueeze(1)  # rows differ in mean
    entry = _role(RowBlock(32, 64), full.shape)
    naive = torch.zeros(3, dtype=torch.float64)
    for local in torch.split(full, [48, 48]):
        naive += local_moments(entry, local)  # no shard info: slices each shard as if it were the full tensor
    assert abs(naive[1] / naive[0] - _exact(entry, full)[1]) > 1.0
    torch.testing.assert_close(_from_shards(entry, full, [48, 48]), _exact(entry, full))


def test_plain_model_matches_recorder(tiny_gpt2_config):
    """No DTensor: no collective (none is initialised here), same numbers as `VarianceRecorder.compute`."""
    torch.manual_seed(0)
    model = GPT2LMHeadModel(tiny_gpt2_config)
    entries = tracked_roles(model)
    assert not is_sharded(entries)
    assert not dist.is_initialized()
    stats = var_mean(entries)
    assert stats.dtype == torch.float32 and stats.shape == (len(entries), 2)
    torch.testing.assert_close(stats, VarianceRecorder(model).compute(), rtol=1e-5, atol=1e-9)
    assert var_mean([]).shape == (0, 2)


def test_dense_kernel_matches_float64_var_mean(tiny_gpt2_config):
    """Dense weights: float32 sums combined in float64 agree with a float64 ``torch.var_mean``."""
    torch.manual_seed(0)
    entries = tracked_roles(GPT2LMHeadModel(tiny_gpt2_config))
    reference = torch.stack([_exact(entry, param.detach()) for entry, param in entries]).float()
    torch.testing.assert_close(var_mean(entries), reference, rtol=1e-5, atol=1e-9)


@pytest.mark.filterwarnings("ignore::DeprecationWarning")  # torch.jit, imported by torch.compile
def test_recorder_sees_through_parallel_and_compile_wrappers(tiny_gpt2_config):
    model = GPT2LMHeadModel(tiny_gpt2_config)
    wrappers = {"compile": torch.compile(model), "DataParallel": torch.nn.DataParallel(model),
                "compile(DataParallel)": torch.compile(torch.nn.DataParallel(model))}
    for name, wrapped in wrappers.items():
        recorder = VarianceRecorder(wrapped)
        assert recorder.model is model, name
        assert recorder.keys == VarianceRecorder(model).keys, name


@pytest.mark.slow
@pytest.mark.multiprocess
@pytest.mark.skipif(not (dist.is_available() and dist.is_gloo_available()), reason="needs torch.distributed gloo")
def test_fsdp2_two_processes_cpu(tmp_path):
    """2 CPU processes, FSDP2 (`fully_shard`), one AdamW step: sharded stats == stats of gathered weights."""
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
           str(ROOT / "scripts" / "fsdp_check.py"), "--out", str(tmp_path)]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=120, cwd=ROOT)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    ranks = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in range(2)]
    assert ranks[0]["world_size"] == 2
    for name, result in ranks[0]["models"].items():
        assert result["is_sharded"] and result["params_replaced"]
        assert result["all_reduce_calls"] == 1
        assert all("Shard(dim=0)" in placement for placement, _, _ in result["shards"].values())
        stats = torch.tensor(result["sharded"], dtype=torch.float64)
        ref = torch.tensor(result["reference"], dtype=torch.float64)
        torch.testing.assert_close(stats, ref, rtol=1e-6, atol=1e-12, msg=name)
        assert result["sharded"] == ranks[1]["models"][name]["sharded"]  # every rank gets the same answer
        tracked = {k for k, t in zip(result["keys"], result["tracked"]) if t}
        assert {f"layers.{i}.{r}" for i in range(2) for r in "qkv"} <= tracked
        assert {"embedding", "layers.0.attn_out", "layers.0.mlp_in", "layers.1.mlp_out"} <= tracked
    gpt2 = ranks[0]["models"]["gpt2"]
    assert gpt2["shards"]["transformer.wte.weight"][1:] == [[101, 32], [51, 32]]  # uneven shards
    assert "[:, 32:64]" in gpt2["slices"] and "[32:64]" in gpt2["slices"]  # K columns; K bias rows straddle
    neox = ranks[0]["models"]["gpt_neox"]
    assert "heads[:, 1::3]" in neox["slices"]
