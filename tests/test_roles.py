"""Roles: every parameter mapped to a role, layer, slice and its true fans."""

import pytest
import torch
from transformers import (
    BertConfig,
    GPT2ForSequenceClassification,
    GPT2ForTokenClassification,
    GPT2LMHeadModel,
    GPT2Model,
    GPTNeoXConfig,
    LlamaConfig,
)

import hf_varinit as hv
from hf_varinit.init.roles import ColumnBlock, HeadInterleaved, RowBlock, get_roles, iter_roles


@pytest.mark.parametrize(
    "model_class, head_name",
    [(GPT2Model, None), (GPT2LMHeadModel, None), (GPT2ForSequenceClassification, "score.weight"),
     (GPT2ForTokenClassification, "classifier.weight")],
)
def test_every_gpt2_parameter_has_a_known_role(tiny_gpt2_config, model_class, head_name):
    model = model_class(tiny_gpt2_config)
    roles = get_roles(model)
    assert all(r.role != "other" for r in roles)
    covered = {r.name for r in roles}
    assert covered == {n for n, _ in model.named_parameters()}
    if head_name:
        assert next(r for r in roles if r.name == head_name).role == "head"


def test_qkv_slices_are_the_column_blocks_of_c_attn(tiny_gpt2_config):
    model = GPT2Model(tiny_gpt2_config)
    d = tiny_gpt2_config.n_embd
    weight = model.h[1].attn.c_attn.weight
    entries = {e.role: (e, p) for e, p, _ in iter_roles(model) if e.layer == 1 and e.role in "qkv"}
    for i, role in enumerate("qkv"):
        entry, param = entries[role]
        assert param is weight
        assert torch.equal(entry.view(param), weight[:, i * d : (i + 1) * d])
        assert (entry.fan_in, entry.fan_out, entry.key) == (d, d, f"layers.1.{role}")


def test_conv1d_fans_are_read_as_in_out(tiny_gpt2_config):
    roles = {r.key: r for r in get_roles(GPT2Model(tiny_gpt2_config))}
    d = tiny_gpt2_config.n_embd
    assert (roles["layers.0.mlp_in"].fan_in, roles["layers.0.mlp_in"].fan_out) == (d, 4 * d)
    assert (roles["layers.0.mlp_out"].fan_in, roles["layers.0.mlp_out"].fan_out) == (4 * d, d)


def test_tied_embedding_and_lm_head_are_one_entry(tiny_gpt2_config):
    model = GPT2LMHeadModel(tiny_gpt2_config)
    assert model.lm_head.weight is model.transformer.wte.weight
    names = [r.name for r in get_roles(model)]
    assert "transformer.wte.weight" in names and "lm_head.weight" not in names


def test_llama_grouped_query_fans():
    cfg = LlamaConfig(num_hidden_layers=2, hidden_size=64, num_attention_heads=8, num_key_value_heads=2,
                      intermediate_size=128, vocab_size=100)
    roles = {r.key: r for r in get_roles(hv.from_config(cfg, seed=0))}
    assert (roles["layers.0.q"].fan_in, roles["layers.0.q"].fan_out) == (64, 64)
    assert (roles["layers.0.k"].fan_in, roles["layers.0.k"].fan_out) == (64, 16)  # 2 kv heads x head_dim 8
    assert roles["layers.1.mlp_gate"].fan_out == 128 and roles["layers.1.mlp_out"].fan_in == 128


def test_bert_separate_qkv_and_output_roles():
    cfg = BertConfig(num_hidden_layers=2, hidden_size=64, num_attention_heads=4, intermediate_size=128,
                     vocab_size=100)
    roles = get_roles(hv.from_config(cfg, seed=0))
    keys = {r.key for r in roles}
    for role in ("q", "k", "v", "attn_out", "mlp_in", "mlp_out"):
        assert f"layers.1.{role}" in keys
    weights = [r.key for r in roles if r.role not in ("bias", "norm")]
    assert len(weights) == len(set(weights))  # the pooler and the LM transform are distinct tensors


def test_gpt_neox_interleaved_qkv_matches_the_models_reshape():
    cfg = GPTNeoXConfig(num_hidden_layers=1, hidden_size=32, num_attention_heads=4, intermediate_size=64,
                        vocab_size=100)
    model = hv.from_config(cfg, seed=0)
    attn = model.gpt_neox.layers[0].attention
    x = torch.randn(1, 3, 32)
    qkv = attn.query_key_value(x).view(1, 3, 4, 3 * 8)  # (B, T, heads, 3 * head_dim), as GPTNeoXAttention
    q_ref, k_ref, v_ref = qkv.chunk(3, dim=-1)
    entries = {e.role: e for e, _, _ in iter_roles(model) if e.layer == 0 and e.role in "qkv"}
    for role, ref in zip("qkv", (q_ref, k_ref, v_ref)):
        w = entries[role].view(attn.query_key_value.weight).reshape(32, 32)  # (heads*head_dim, in)
        b = entries[role].view(attn.query_key_value.bias).reshape(32)
        ours = (x @ w.T + b).view(1, 3, 4, 8)
        torch.testing.assert_close(ours, ref)


def test_each_slice_kind_names_its_axis_shape_and_plan_text():
    weight = torch.arange(96.0 * 2).view(96, 2)
    cols, rows, heads = ColumnBlock(4, 8), RowBlock(32, 64), HeadInterleaved(index=1, parts=3, num_heads=4)
    assert (cols.axis(2), rows.axis(2), heads.axis(2)) == (1, 0, 0)
    assert cols.shape((16, 24)) == (16, 4) and rows.shape((96, 2)) == (32, 2) and heads.shape((96, 2)) == (4, 8, 2)
    assert (str(cols), str(rows), str(heads)) == ("[:, 4:8]", "[32:64]", "heads[:, 1::3]")
    kept = heads.select(torch.arange(96), 96)
    torch.testing.assert_close(weight[kept].view(4, 8, 2), heads.view(weight))  # select agrees with view
    assert rows.select(torch.arange(96), 96).nonzero().squeeze(1).tolist() == list(range(32, 64))


def test_unknown_architecture_falls_back_to_module_roles():
    model = torch.nn.Sequential(torch.nn.Embedding(10, 8), torch.nn.Linear(8, 4))
    roles = {r.name: r for r in get_roles(model)}
    assert roles["0.weight"].role == "embedding" and roles["1.weight"].role == "linear"
    assert (roles["1.weight"].fan_in, roles["1.weight"].fan_out) == (8, 4)


def test_plan_says_when_roles_come_from_the_fallback():
    from transformers import OPTConfig

    cfg = OPTConfig(num_hidden_layers=1, hidden_size=32, ffn_dim=64, num_attention_heads=4, vocab_size=100,
                    word_embed_proj_dim=32, max_position_embeddings=32)
    rows = hv.init_plan(hv.from_config(cfg, seed=0), "kaiming")
    linear = [r for r in rows if r.role == "linear"]
    assert linear and all("'opt' is not in the table" in r.note for r in linear)
