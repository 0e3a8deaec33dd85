"""`moments.DenseMoments`, the recorder's kernel for unsharded weights: one pass per parameter, one host transfer.

Each parameter is cut into rows on which all its slices start and end; the rows' sums and sums of squares are
added into their entries on the host in float64. The numbers must equal float64 ``torch.var_mean`` of every
slice's view, for fused column blocks (GPT-2), per-head interleaved rows (GPT-NeoX), separate projections (Llama),
row blocks, and slices too fine for rows (reduced through their views).
"""

from __future__ import annotations

import pytest
import torch
from transformers import (
    GPT2Config,
    GPT2LMHeadModel,
    GPTNeoXConfig,
    GPTNeoXForCausalLM,
    LlamaConfig,
    LlamaForCausalLM,
)

from hf_varinit import VarianceRecorder
from hf_varinit.init.roles import ColumnBlock, RowBlock, TensorRole, tracked_roles
from hf_varinit.record.moments import MIN_ROW, DenseMoments, var_mean

MODELS = {
    "gpt2": lambda: GPT2LMHeadModel(GPT2Config(n_layer=2, n_embd=32, n_head=4, vocab_size=101, n_positions=32)),
    "gpt_neox": lambda: GPTNeoXForCausalLM(GPTNeoXConfig(num_hidden_layers=2, hidden_size=32, num_attention_heads=4,
                                                          intermediate_size=64, vocab_size=101)),
    "llama": lambda: LlamaForCausalLM(LlamaConfig(num_hidden_layers=2, hidden_size=32, num_attention_heads=4,
                                                  intermediate_size=64, vocab_size=101)),
}


def _exact(entries) -> torch.Tensor:
    return torch.stack([torch.stack(torch.var_mean(role.view(param.detach()).double(), correction=0))
                        for role, param in entries]).float()


def _shifted(model: torch.nn.Module) -> torch.nn.Module:
    """Weights with a non-zero mean, so var = E[x^2] - mean^2 is tested too."""
    with torch.no_grad():
        for i, p in enumerate(model.parameters()):
            p.add_(0.003 * (i % 5))
    return model


@pytest.mark.parametrize("name", sorted(MODELS))
def test_dense_kernel_equals_float64_var_mean(name):
    torch.manual_seed(0)
    entries = tracked_roles(_shifted(MODELS[name]()))
    moments = DenseMoments(entries)
    torch.testing.assert_close(moments(), _exact(entries), rtol=1e-5, atol=1e-9)
    torch.testing.assert_close(moments(), var_mean(entries), rtol=1e-5, atol=1e-9)  # the per-tensor kernel
    assert all(g is not None for _, g, _ in moments.groups)  # every parameter in rows: no slice copied


def test_gpt2_fused_qkv_is_one_parameter_read_as_rows_of_the_width():
    entries = tracked_roles(GPT2LMHeadModel(GPT2Config(n_layer=1, n_embd=32, n_head=4, vocab_size=50,
                                                       n_positions=16)))
    groups = {param.shape: (g, len(members)) for param, g, members in DenseMoments(entries).groups}
    assert groups[torch.Size([32, 96])] == (32, 3)  # c_attn: Q, K and V from one pass, rows of 32
    assert groups[torch.Size([32, 128])] == (32 * 128, 1)  # c_fc: tracked whole, one row


def test_row_blocks_and_slices_too_fine_for_rows():
    torch.manual_seed(0)
    linear = torch.nn.Linear(32, 96)
    rows = [(TensorRole(name="weight", key=f"r.{i}", role="q", layer=0, slice=RowBlock(32 * i, 32 * (i + 1)),
                        fan_in=32, fan_out=32, shape=(32, 32)), linear.weight) for i in range(3)]
    width = MIN_ROW // 2
    fine = [(TensorRole(name="weight", key=f"c.{i}", role="q", layer=0, slice=ColumnBlock(width * i, width * (i + 1)),
                        fan_in=32, fan_out=width, shape=(96, width)), linear.weight) for i in range(32 // width)]
    for entries, expected_g in ((rows, 32), (fine, None)):
        moments = DenseMoments(entries)
        assert [g for _, g, _ in moments.groups] == [expected_g]
        torch.testing.assert_close(moments(), _exact(entries), rtol=1e-5, atol=1e-9)


def test_a_record_reads_the_device_once(monkeypatch, tiny_gpt2_config):
    recorder = VarianceRecorder(GPT2LMHeadModel(tiny_gpt2_config))
    calls = []

    def counting(name, original):
        def wrapper(tensor, *args, **kwargs):
            calls.append(name)
            return original(tensor, *args, **kwargs)
        return wrapper

    for name in ("cpu", "item", "tolist", "__float__"):
        monkeypatch.setattr(torch.Tensor, name, counting(name, getattr(torch.Tensor, name)))
    recorder.record(0)
    assert calls == ["cpu"]  # one transfer for the record, none per tensor
