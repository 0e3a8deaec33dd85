"""The architecture table: config accessors, the config builder and the layer keys."""

import pytest
from transformers import GPT2Config, LlamaConfig

from hf_varinit.arch import (
    build_config,
    config_differences,
    config_from_dict,
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


def test_shape_differences_compare_tensor_shapes_not_depth():
    two = {"embedding": (1000, 64), "layers.0.q": (64, 64), "layers.1.q": (64, 64), "layers.1.mlp_in": (64, 256)}
    assert shape_differences(two, two) == []
    four = {**two, "layers.2.q": (64, 64), "layers.3.q": (64, 64)}
    assert shape_differences(two, four) == []  # depth alone is not a shape difference
    assert shape_differences({**two, "embedding": (500, 64)}, two) == [("embedding", (500, 64), (1000, 64))]
    wider_mlp = {**four, "layers.1.mlp_in": (64, 512)}
    assert shape_differences(two, wider_mlp) == [("layers.1.mlp_in", (64, 256), (64, 512))]
    assert shape_differences({"head": (10, 64)}, {"embedding": (1000, 64)}) == []  # keys one side lacks


def test_config_differences_name_shape_entries_but_not_head_counts():
    assert config_differences(GPT2Config(n_head=4), GPT2Config(n_head=8, n_layer=3)) == []
    assert config_differences(GPT2Config(vocab_size=100), GPT2Config(vocab_size=200)) == [("vocab_size", 100, 200)]


def test_config_from_dict_applies_overrides_and_refuses_unknown_ones():
    stored = GPT2Config(n_layer=2, n_embd=32, n_head=4).to_dict()
    config = config_from_dict("gpt2", stored, n_layer=3)
    assert isinstance(config, GPT2Config) and (config.n_layer, config.n_embd, config.n_head) == (3, 32, 4)
    with pytest.raises(ConfigError, match="gpt2 config has no entry 'n_layers'; override one of: .*n_layer"):
        config_from_dict("gpt2", stored, n_layers=3)
    with pytest.raises(ConfigError, match="model_type 'no_such_model'"):
        config_from_dict("no_such_model", {})
