"""`VarianceCallback` on sharded weights: FSDP2 (a real 2-process gloo run) and DeepSpeed ZeRO-3.

deepspeed is not installed here: the ZeRO-3 tests partition a model by hand the way ZeRO-3 does (each parameter's
data an empty placeholder, ``ds_id`` / ``ds_shape`` / ``ds_numel`` set) and stand in a ``deepspeed.zero``
module whose ``GatheredParameters`` puts the full tensor back for the duration of the block. They test our side
(what is gathered, when, and how much at once), not deepspeed's collectives.
"""

from __future__ import annotations

import contextlib
import importlib.machinery
import json
import os
import subprocess
import sys
import types
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.distributed as dist
from transformers import GPT2Config, TrainerControl, TrainerState, TrainingArguments

from hf_varinit import from_config
from hf_varinit.errors import ConfigError
from hf_varinit.record.callback import VarianceCallback
from hf_varinit.record.recorder import VarianceRecorder
from hf_varinit.record.stats_file import load_stats

ROOT = Path(__file__).resolve().parents[1]
CONFIG = GPT2Config(n_layer=2, n_embd=32, n_head=4, vocab_size=64, n_positions=16, bos_token_id=0, eos_token_id=0)


@pytest.mark.slow
@pytest.mark.multiprocess
@pytest.mark.skipif(not (dist.is_available() and dist.is_gloo_available()), reason="needs torch.distributed gloo")
def test_callback_on_fsdp2_two_processes_records_on_every_rank_and_writes_once(tmp_path):
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
           str(ROOT / "scripts" / "fsdp_check.py"), "--out", str(tmp_path), "--check", "callback"]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=120, cwd=ROOT)  # a hang fails here
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    rank0, rank1 = (json.loads((tmp_path / f"callback_rank{r}.json").read_text()) for r in range(2))
    assert rank0["world_size"] == 2 and rank0["is_sharded"]
    assert rank0["steps"] == rank1["steps"] == [0, 2, 4]  # both ranks joined every record
    assert rank0["records"] == rank1["records"]
    out = tmp_path / "trainer"
    assert rank1["writes"] == [] and sorted(rank0["writes"]) == sorted(
        str(p) for p in (out, out / "checkpoint-2", out / "checkpoint-4"))
    assert sorted(p.relative_to(out).as_posix() for p in out.rglob("variance*")) == [
        "checkpoint-2/variance.safetensors", "checkpoint-4/variance.safetensors", "variance.safetensors"]
    stats = load_stats(out)
    assert stats.step.tolist() == [0, 2, 4] and stats.keys == rank0["keys"]
    reference = np.asarray(rank0["reference"])  # float64 [var, mean] of the gathered final weights
    np.testing.assert_allclose(stats.var[-1], reference[:, 0], rtol=1e-6)
    np.testing.assert_allclose(stats.mean[-1], reference[:, 1], rtol=1e-5, atol=1e-9)
    init = np.asarray(rank0["init"])  # the unsharded model's init
    np.testing.assert_allclose(stats.var[0], init[:, 0], rtol=1e-6)
    assert not np.allclose(stats.var[-1], stats.var[0], rtol=1e-4)  # the weights did move


# ----------------------------------------------------------------------------- ZeRO-3


def zero3_partition(model: torch.nn.Module) -> dict[torch.nn.Parameter, torch.Tensor]:
    """Partition ``model`` as ZeRO-3 does on a rank: empty data, ``ds_*`` attributes. Returns the full tensors."""
    full = {}
    for i, param in enumerate(model.parameters()):
        full[param] = param.data.clone()
        param.ds_id, param.ds_shape, param.ds_numel = i, tuple(param.shape), param.numel()
        param.data = torch.empty(0, dtype=param.dtype)
    return full


class FakeDeepSpeed(types.ModuleType):
    """A ``deepspeed`` module with ``zero.GatheredParameters``: the full tensor inside the block, the placeholder
    after; it counts the gathers and the most elements held at once."""

    def __init__(self, full: dict[torch.nn.Parameter, torch.Tensor]):
        super().__init__("deepspeed")
        self.__spec__ = importlib.machinery.ModuleSpec("deepspeed", None)  # what find_spec looks for
        self.full, self.gathers, self.held, self.peak = full, [], 0, 0
        self.zero = types.SimpleNamespace(GatheredParameters=self.gathered)

    @contextlib.contextmanager
    def gathered(self, params, modifier_rank=None):
        assert modifier_rank is None  # read-only: nothing is broadcast back
        for p in params:
            p.data = self.full[p]
            self.held += p.numel()
        self.gathers.append(len(params))
        self.peak = max(self.peak, self.held)
        try:
            yield
        finally:
            for p in params:
                self.held -= p.numel()
                p.data = torch.empty(0, dtype=p.dtype)


def _trainer_hooks(tmp_path: Path, model, callback: VarianceCallback) -> None:
    """on_train_begin, 2 steps, on_train_end, as `Trainer` calls them (world size 1)."""
    args = TrainingArguments(output_dir=str(tmp_path), max_steps=2, use_cpu=True, report_to=[])
    state, control = TrainerState(max_steps=2), TrainerControl()
    callback.on_train_begin(args, state, control, model=model)
    for _ in range(2):
        callback.on_step_begin(args, state, control)
        state.global_step += 1
        callback.on_step_end(args, state, control)
    callback.on_train_end(args, state, control)


def test_zero3_without_deepspeed_is_refused_at_train_begin(tmp_path, monkeypatch):
    model = from_config(CONFIG, "gpt2", seed=0)
    zero3_partition(model)
    monkeypatch.setitem(sys.modules, "deepspeed", None)  # not importable, installed or not
    with pytest.raises(ConfigError, match=r"ZeRO-3.*deepspeed is not importable.*pip install deepspeed"):
        _trainer_hooks(tmp_path, model, VarianceCallback(every=1))
    assert not list(tmp_path.rglob("variance*"))


def test_zero3_gathers_one_tensor_at_a_time_and_matches_the_full_weights(tmp_path, monkeypatch):
    model = from_config(CONFIG, "gpt2", seed=0)
    expected = VarianceRecorder(model)
    want = expected.compute()
    full = zero3_partition(model)
    deepspeed = FakeDeepSpeed(full)
    monkeypatch.setitem(sys.modules, "deepspeed", deepspeed)
    recorder = VarianceRecorder(model)
    assert recorder.collective and recorder.keys == expected.keys
    assert [e.shape for e, _ in recorder.entries] == [e.shape for e, _ in expected.entries]  # full shapes, not (0,)
    torch.testing.assert_close(recorder.compute(), want, rtol=0, atol=0)
    distinct = len({id(p) for _, p in recorder.entries})
    assert deepspeed.gathers == [1] * distinct  # one tensor per gather; fused Q/K/V share one
    tracked = {id(p): p for _, p in recorder.entries}.values()
    assert deepspeed.peak == max(full[p].numel() for p in tracked)  # memory: the largest tensor, never two
    assert all(p.numel() == 0 for _, p in recorder.entries)  # placeholders again afterwards
    assert all(row["init_std"] is not None for row in recorder.tracked())  # the rule's plan, from the full shapes

    _trainer_hooks(tmp_path, model, VarianceCallback(every=1))
    stats = load_stats(tmp_path)
    assert stats.step.tolist() == [0, 1, 2]
    np.testing.assert_array_equal(stats.var[-1], want[:, 0].numpy())
