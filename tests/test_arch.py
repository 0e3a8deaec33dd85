"""The architecture table (built-in, registered and entry-point entries), config accessors, the config builder and
the layer keys."""

import importlib
import logging
import sys
import textwrap

import pytest
from transformers import GPT2Config, LlamaConfig

from hf_varinit.arch import table
from hf_varinit.arch.builder import build_config, config_from_dict, config_options, default_mlp_width
from hf_varinit.arch.config import (
    check_config_sizes,
    config_differences,
    hidden_size,
    num_heads,
    num_kv_heads,
    num_layers,
    shape_signature,
)
from hf_varinit.arch.keys import layer_key, parse_layer_key, shape_differences
from hf_varinit.arch.table import Architecture, get_architecture, is_known_architecture, register_architecture
from hf_varinit.errors import ConfigError


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


def test_a_config_built_at_a_small_vocab_has_no_token_ids_outside_it(caplog):
    with caplog.at_level(logging.WARNING):
        gpt2 = build_config("gpt2", n_layer=2, n_embd=32, n_head=4, vocab_size=4096)
    assert gpt2.bos_token_id is None and gpt2.eos_token_id is None  # GPT-2's 50256 is not in a vocab of 4096
    assert "token_id" not in caplog.text
    assert build_config("gpt2", vocab_size=4096, bos_token_id=0, eos_token_id=0).eos_token_id == 0  # given: kept
    assert build_config("gpt2", vocab_size=60000).eos_token_id == 50256  # inside the vocab: kept
    llama = build_config("llama", vocab_size=300)
    assert (llama.bos_token_id, llama.eos_token_id) == (1, 2)


# --- the table beyond the built-in families ---------------------------------------------------------------------
@pytest.fixture
def fresh_table(monkeypatch):
    """The table as built in, restored after the test."""
    monkeypatch.setattr(table, "ARCHITECTURES", dict(table.ARCHITECTURES))
    monkeypatch.setattr(table, "_LOOKED_UP", set())
    return table.ARCHITECTURES


def _toy_config(n_layer=None, n_embd=None, **extra):
    """A family outside transformers' builders: depth x width hidden layers in one list entry."""
    return {"model_type": "toy_mlp", "hidden_sizes": [n_embd or 8] * (n_layer or 2), **extra}


TOY = Architecture(modules={"classifier": "head"}, build=_toy_config, options=("n_layer", "n_embd", "input_size"),
                   size_keys=("input_size", "hidden_sizes"))


def test_register_architecture_adds_a_family_and_refuses_a_second_entry(fresh_table):
    assert not is_known_architecture("toy_mlp")
    register_architecture("toy_mlp", TOY)
    assert get_architecture("toy_mlp") is TOY and is_known_architecture("toy_mlp")
    with pytest.raises(ConfigError, match="'toy_mlp' is in the architecture table already; pass overwrite=True"):
        register_architecture("toy_mlp", TOY)
    register_architecture("toy_mlp", Architecture(modules={}), overwrite=True)
    with pytest.raises(ConfigError, match="give an hf_varinit.arch.table.Architecture"):
        register_architecture("other", {"classifier": "head"})


def test_a_family_with_its_own_builder_lists_its_options_and_builds_through_them(fresh_table):
    register_architecture("toy_mlp", TOY)
    assert config_options("toy_mlp") == ("n_layer", "n_embd", "input_size")
    assert build_config("toy_mlp", n_layer=3, n_embd=16, input_size=4) == {
        "model_type": "toy_mlp", "hidden_sizes": [16, 16, 16], "input_size": 4}
    with pytest.raises(ConfigError, match="n_head do\\(es\\) not apply to model_type 'toy_mlp'"):
        build_config("toy_mlp", n_head=2)
    assert default_mlp_width("toy_mlp", 64) is None


def test_a_familys_own_size_entries_are_checked_and_compared(fresh_table):
    register_architecture("toy_mlp", TOY)
    check_config_sizes({"model_type": "toy_mlp", "input_size": 4, "hidden_sizes": [8, 8]})
    with pytest.raises(ConfigError, match=r"hidden_sizes\[1\]=0 is invalid"):
        check_config_sizes({"model_type": "toy_mlp", "hidden_sizes": [8, 0]})
    with pytest.raises(ConfigError, match=r"hidden_sizes=\[\] is invalid"):
        check_config_sizes({"model_type": "toy_mlp", "hidden_sizes": []})
    assert shape_signature({"model_type": "toy_mlp", "hidden_sizes": [8, 8], "num_labels": 3}) == {
        "num_labels": 3, "hidden_sizes": [8, 8]}
    check_config_sizes({"model_type": "gpt2", "hidden_sizes": []})  # not a size entry of GPT-2


def test_an_unknown_model_type_resolves_through_the_entry_point_group_on_first_use(fresh_table, tmp_path,
                                                                                  monkeypatch):
    (tmp_path / "toy_arch_plugin.py").write_text(textwrap.dedent("""
        from hf_varinit.arch.table import Architecture
        TOY = Architecture(modules={"classifier": "head"})
        NOT_AN_ENTRY = {"classifier": "head"}
    """))
    dist = tmp_path / "toy_arch_plugin-0.1.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: toy-arch-plugin\nVersion: 0.1\n")
    (dist / "entry_points.txt").write_text("[hf_varinit.architectures]\ntoy_mlp = toy_arch_plugin:TOY\n"
                                           "broken = toy_arch_plugin:NOT_AN_ENTRY\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    importlib.invalidate_caches()
    monkeypatch.delitem(sys.modules, "toy_arch_plugin", raising=False)
    assert "toy_arch_plugin" not in sys.modules and "toy_mlp" not in fresh_table
    assert get_architecture("toy_mlp").modules == {"classifier": "head"}  # imported now, on lookup
    assert "toy_arch_plugin" in sys.modules and "toy_mlp" in table.ARCHITECTURES
    with pytest.raises(ConfigError, match="names a dict, not an hf_varinit.arch.table.Architecture"):
        get_architecture("broken")
    assert get_architecture("no_such_type") is None
    with pytest.raises(ConfigError, match="valid: gpt2, .*broken"):  # installed entries are named too
        config_options("opt")


def test_config_from_dict_refuses_a_size_override_that_is_not_positive_and_drops_token_ids_outside_a_new_vocab():
    stored = GPT2Config(n_layer=2, n_embd=32, n_head=4).to_dict()  # bos = eos = 50256
    with pytest.raises(ConfigError, match="n_layer=-5 is invalid"):
        config_from_dict("gpt2", stored, n_layer=-5)
    small = config_from_dict("gpt2", stored, vocab_size=4096)
    assert small.bos_token_id is None and small.eos_token_id is None
    assert config_from_dict("gpt2", stored, vocab_size=4096, eos_token_id=1).eos_token_id == 1
    assert config_from_dict("gpt2", stored).eos_token_id == 50256
