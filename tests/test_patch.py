"""Patching: from_config, patched_init, apply_init and from_pretrained (the lab's MLP model: experiments/tests)."""

import pytest
import torch
from transformers import (
    AutoModel,
    AutoModelForCausalLM,
    GPT2ForSequenceClassification,
    GPT2LMHeadModel,
    PreTrainedModel,
)

import hf_varinit as hv


def _state(model):
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def test_hf_rule_is_bit_identical_to_plain_from_config(tiny_gpt2_config):
    torch.manual_seed(3)
    plain = AutoModelForCausalLM.from_config(tiny_gpt2_config)
    ours = hv.from_config(tiny_gpt2_config, "hf", seed=3)
    for key, value in plain.state_dict().items():
        assert torch.equal(value, ours.state_dict()[key]), key


def test_from_config_is_deterministic_given_the_seed(tiny_gpt2_config):
    a = _state(hv.from_config(tiny_gpt2_config, "kaiming", seed=1))
    b = _state(hv.from_config(tiny_gpt2_config, "kaiming", seed=1))
    c = _state(hv.from_config(tiny_gpt2_config, "kaiming", seed=2))
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert not torch.equal(a["transformer.h.0.attn.c_attn.weight"], c["transformer.h.0.attn.c_attn.weight"])


def test_seed_leaves_the_global_rng_alone(tiny_gpt2_config):
    torch.manual_seed(0)
    expected = torch.rand(3)
    torch.manual_seed(0)
    hv.from_config(tiny_gpt2_config, "kaiming", seed=5)
    assert torch.equal(torch.rand(3), expected)


def test_from_config_picks_the_causal_lm_class_and_records_the_rule(tiny_gpt2_config, tmp_path):
    model = hv.from_config(tiny_gpt2_config, "kaiming:mode=fan_out", seed=0)
    assert isinstance(model, GPT2LMHeadModel)
    model.save_pretrained(tmp_path)
    loaded = AutoModelForCausalLM.from_pretrained(tmp_path)
    assert loaded.config.varinit_rule == "kaiming:mode=fan_out"
    assert loaded.config.varinit_seed == 0


def test_patched_init_covers_plain_hf_calls_and_is_removed_after(tiny_gpt2_config):
    original = PreTrainedModel.initialize_weights
    with hv.patched_init("normal:std=0.5"):
        model = AutoModelForCausalLM.from_config(tiny_gpt2_config)
    assert model.transformer.h[0].mlp.c_fc.weight.std().item() == pytest.approx(0.5, rel=0.05)
    assert PreTrainedModel.initialize_weights is original
    after = AutoModelForCausalLM.from_config(tiny_gpt2_config)
    assert after.transformer.h[0].mlp.c_fc.weight.std().item() == pytest.approx(0.02, rel=0.1)


def test_patch_is_removed_after_an_exception(tiny_gpt2_config):
    original = PreTrainedModel.initialize_weights
    with pytest.raises(RuntimeError, match="boom"), hv.patched_init("xavier"):
        raise RuntimeError("boom")
    assert PreTrainedModel.initialize_weights is original


def test_nested_patches_restore_in_order(tiny_gpt2_config):
    original = PreTrainedModel.initialize_weights
    with hv.patched_init("normal:std=0.5"):
        with hv.patched_init("normal:std=0.1"):
            inner = AutoModel.from_config(tiny_gpt2_config)
        outer = AutoModel.from_config(tiny_gpt2_config)
    assert inner.h[0].mlp.c_fc.weight.std().item() == pytest.approx(0.1, rel=0.05)
    assert outer.h[0].mlp.c_fc.weight.std().item() == pytest.approx(0.5, rel=0.05)
    assert PreTrainedModel.initialize_weights is original


def test_from_pretrained_under_the_patch_only_initialises_missing_weights(tiny_gpt2_config, tmp_path):
    source = hv.from_config(tiny_gpt2_config, "hf", seed=0)
    source.save_pretrained(tmp_path)
    with hv.patched_init("normal:std=0.7"):
        model = GPT2ForSequenceClassification.from_pretrained(tmp_path, num_labels=3)
    saved = source.transformer.state_dict()
    for key, value in model.transformer.state_dict().items():
        assert torch.equal(value, saved[key]), key
    assert model.score.weight.std().item() == pytest.approx(0.7, rel=0.15)


def test_apply_init_reinitialises_a_built_model(tiny_gpt2_config):
    model = hv.from_config(tiny_gpt2_config, "hf", seed=0)
    hv.apply_init(model, "normal:std=0.3", seed=1)
    assert model.transformer.h[1].attn.c_proj.weight.std().item() == pytest.approx(0.3, rel=0.1)
    assert model.lm_head.weight is model.transformer.wte.weight
    assert model.config.varinit_rule == "normal:std=0.3"
    again = _state(hv.apply_init(hv.from_config(tiny_gpt2_config, "hf", seed=0), "normal:std=0.3", seed=1))
    assert all(torch.equal(v, again[k]) for k, v in model.state_dict().items())


def test_init_plan_is_a_dry_run(tiny_gpt2_config):
    model = hv.from_config(tiny_gpt2_config, "hf", seed=0)
    before = _state(model)
    rows = hv.init_plan(model, "kaiming")
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())
    assert {"layers.0.q", "layers.0.k", "layers.0.v"} <= {r.key for r in rows}
    assert rows[0]._fields[:8] == ("name", "role", "layer", "slice", "fan_in", "fan_out", "distribution", "std")


def test_from_config_passes_kwargs_to_a_named_architecture(tiny_gpt2_config):
    tiny_gpt2_config.architectures = ["GPT2LMHeadModel"]
    model = hv.from_config(tiny_gpt2_config, "kaiming", seed=0, dtype=torch.bfloat16)
    assert isinstance(model, GPT2LMHeadModel)
    assert model.transformer.h[0].attn.c_attn.weight.dtype == torch.bfloat16


def test_one_dimensional_parameters_of_unknown_modules_keep_the_models_init():
    class Scaled(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.linear = torch.nn.Linear(8, 8)
            self.gamma = torch.nn.Parameter(torch.full((8,), 0.5))

    model = Scaled()
    rows = {r.name: r for r in hv.init_plan(model, "kaiming")}
    assert rows["gamma"].role == "other" and rows["gamma"].distribution == "hf"
    assert rows["linear.bias"].distribution == "constant(0)"


def test_patched_init_covers_every_part_of_a_composite_model():
    from transformers import BertConfig, EncoderDecoderConfig, EncoderDecoderModel, GPT2Config

    enc = BertConfig(num_hidden_layers=1, hidden_size=64, num_attention_heads=4, intermediate_size=128, vocab_size=100)
    dec = GPT2Config(n_layer=1, n_embd=64, n_head=4, vocab_size=100, add_cross_attention=True, is_decoder=True,
                     bos_token_id=0, eos_token_id=0)
    config = EncoderDecoderConfig.from_encoder_decoder_configs(enc, dec)
    with hv.patched_init("normal:std=0.5"):
        model = EncoderDecoderModel(config=config)
    assert model.encoder.encoder.layer[0].attention.self.query.weight.std().item() == pytest.approx(0.5, rel=0.1)
    assert model.decoder.transformer.h[0].crossattention.q_attn.weight.std().item() == pytest.approx(0.5, rel=0.1)
    keys = {r.key for r in hv.init_plan(model, "kaiming") if r.role in ("q", "k", "v")}
    assert {"encoder.layers.0.q", "decoder.layers.0.v"} <= keys  # each part by its own architecture table
