"""The architecture table: config accessors, the config builder and the layer keys."""

import pytest
from transformers import GPT2Config, LlamaConfig

from hf_varinit.arch import (
    build_config,
    config_options,
    default_mlp_width,
    hidden_size,
    layer_key,
    num_heads,
    num_kv_heads,
    num_layers,
    parse_layer_key,
    shape_differences,
)
from hf_varinit.errors import ConfigError
from hf_varinit.models import VarInitMLPConfig


def test_layer_keys_round_trip():
    assert layer_key(3, "q") == "layers.3.q"
    assert layer_key(None, "embedding") == "embedding"
    assert parse_layer_key("layers.3.q") == (3, "q")
    assert parse_layer_key("layers.0.q.bias") == (0, "q.bias")
    assert parse_layer_key("embedding") == (None, "embedding")
    assert parse_layer_key("encoder.layers.0.q") == (None, "encoder.layers.0.q")  # a part's key is not a block key


def test_accessors_read_configs_and_their_dicts():
    gpt2 = GPT2Config(n_layer=2, n_embd=32, n_head=4)
    llama = LlamaConfig(num_hidden_layers=3, hidden_size=64, num_attention_heads=8, num_key_value_heads=2)
    for config in (gpt2, gpt2.to_dict()):
        assert (num_layers(config), hidden_size(config), num_heads(config), num_kv_heads(config)) == (2, 32, 4, 4)
    for config in (llama, llama.to_dict()):
        assert (num_layers(config), hidden_size(config), num_heads(config), num_kv_heads(config)) == (3, 64, 8, 2)
    assert num_layers({}) is None and hidden_size({"hidden_size": None}) is None


def test_build_config_maps_the_option_names_per_family():
    gpt2 = build_config("gpt2", n_layer=2, n_embd=32, n_head=4, n_positions=64, dropout=0.0, vocab_size=300)
    assert isinstance(gpt2, GPT2Config)
    assert (gpt2.n_layer, gpt2.n_embd, gpt2.n_head, gpt2.n_positions, gpt2.vocab_size) == (2, 32, 4, 64, 300)
    assert gpt2.resid_pdrop == gpt2.embd_pdrop == gpt2.attn_pdrop == 0.0 and gpt2.n_inner is None
    llama = build_config("llama", n_layer=2, n_embd=64, n_head=4, n_kv_heads=2, intermediate_size=96, bos_token_id=1)
    assert isinstance(llama, LlamaConfig)
    assert (llama.num_key_value_heads, llama.intermediate_size, llama.bos_token_id) == (2, 96, 1)
    assert build_config("llama", n_head=4).num_key_value_heads == 4  # no GQA unless asked


def test_build_config_leaves_unset_options_at_the_config_default():
    assert build_config("gpt2").to_dict() == GPT2Config().to_dict()
    mlp = build_config("varinit_mlp", n_layer=2, num_labels=3)
    assert isinstance(mlp, VarInitMLPConfig) and mlp.hidden_sizes == [256, 256] and mlp.num_labels == 3


def test_build_config_refuses_options_that_do_not_apply():
    with pytest.raises(ConfigError, match="n_kv_heads do\\(es\\) not apply to model_type 'gpt2'"):
        build_config("gpt2", n_kv_heads=2)
    with pytest.raises(ConfigError, match="no config builder for model_type 'opt'; valid: gpt2"):
        config_options("opt")


def test_default_mlp_width_follows_the_family():
    assert default_mlp_width("gpt2", 64) is None  # GPT-2's own default is 4x the width
    assert default_mlp_width("llama", 64) == 176  # 8/3 x 64, rounded up to a multiple of 8
    assert default_mlp_width("bert", 64) == 256


def test_shape_differences_compare_shapes_not_depth():
    mlp = {"input_size": 8, "hidden_sizes": [16, 16, 16]}
    assert shape_differences(mlp, {"input_size": 8, "hidden_sizes": [16, 16]}) == []
    assert shape_differences(mlp, {"input_size": 8, "hidden_sizes": [32, 32, 32]}) == [
        ("hidden_sizes", [16, 16, 16], [32, 32, 32])
    ]
    assert shape_differences(GPT2Config(n_head=4), GPT2Config(n_head=4, n_layer=3)) == []
