"""Per-role scales of the `gpt2` rule: the pilot-free baseline (embeddings, head, residual projections)."""

import math

import pytest
from transformers import LlamaConfig

import hf_varinit as hv


def _stds(model, rule):
    return {row.key: row.std for row in hv.init_plan(model, rule) if row.key}


def test_role_scales_change_only_their_roles(tiny_gpt2_config):
    model = hv.from_config(tiny_gpt2_config, "hf", seed=0)
    base = _stds(model, "gpt2")
    scaled = _stds(model, "gpt2:embedding_std=0.06,residual_scale=3")
    for key, std in base.items():
        if key in ("embedding", "position"):
            assert scaled[key] == pytest.approx(0.06)
        elif key.endswith(("attn_out", "mlp_out")):
            assert scaled[key] == pytest.approx(3 * std)
            assert std == pytest.approx(0.02 / math.sqrt(2 * tiny_gpt2_config.n_layer))
        else:
            assert scaled[key] == pytest.approx(std), key


def test_role_scales_are_drawn(tiny_gpt2_config):
    tiny_gpt2_config.n_embd, tiny_gpt2_config.vocab_size = 64, 2048
    model = hv.from_config(tiny_gpt2_config, "gpt2:embedding_std=0.1,residual_scale=4", seed=0)
    assert model.transformer.wte.weight.std().item() == pytest.approx(0.1, rel=0.05)
    out = model.transformer.h[0].attn.c_proj.weight.std().item()
    assert out == pytest.approx(4 * 0.02 / math.sqrt(4), rel=0.1)


def test_head_std_sets_an_untied_head():
    config = LlamaConfig(num_hidden_layers=2, hidden_size=64, intermediate_size=128, num_attention_heads=4,
                         num_key_value_heads=2, vocab_size=512, tie_word_embeddings=False)
    model = hv.from_config(config, "hf", seed=0)
    stds = _stds(model, "gpt2:head_std=0.05")
    assert stds["head"] == pytest.approx(0.05)
    assert stds["embedding"] == pytest.approx(config.initializer_range)


@pytest.mark.parametrize("spec, key", [("gpt2:residual_scale=0", "residual_scale"),
                                       ("gpt2:embedding_std=-1", "embedding_std"),
                                       ("gpt2:head_std=nan", "head_std")])
def test_bad_role_scales_name_the_key(spec, key):
    with pytest.raises(hv.RuleError, match=key):
        hv.get_rule(spec)


def test_the_spec_round_trips():
    rule = hv.get_rule("gpt2:embedding_std=0.06,residual_scale=3")
    assert hv.get_rule(rule.spec) == rule and "residual_scale=3" in rule.spec
