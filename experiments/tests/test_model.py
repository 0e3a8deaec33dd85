"""The lab's MLP model: built through the library's init path, saved and reloaded through the Auto classes, its
roles; and its entry in the library's architecture table (through the lab's entry point)."""

import pytest
import torch
from transformers import AutoModel

import hf_varinit as hv
from hf_varinit.arch.builder import build_config, config_options
from hf_varinit.arch.table import get_architecture
from hf_varinit.init.roles import tracked_roles
from hf_varinit_lab.arch import VARINIT_MLP
from hf_varinit_lab.model import VarInitMLPConfig, VarInitMLPForClassification


def test_mlp_from_config_save_and_load(tmp_path):
    config = VarInitMLPConfig(input_size=10, hidden_sizes=[32, 32], num_labels=4)
    model = hv.from_config(config, "kaiming", seed=0)
    assert isinstance(model, VarInitMLPForClassification)
    out = model(inputs=torch.randn(5, 10), labels=torch.tensor([0, 1, 2, 3, 0]))
    assert out.logits.shape == (5, 4) and torch.isfinite(out.loss)
    model.save_pretrained(tmp_path)
    loaded = AutoModel.from_pretrained(tmp_path)
    assert isinstance(loaded, VarInitMLPForClassification)
    assert torch.equal(loaded.layers[0].weight, model.layers[0].weight)
    assert loaded.config.varinit_rule == "kaiming"


def test_mlp_config_rejects_bad_activation():
    with pytest.raises(ValueError, match="activation='swish' is unknown"):
        VarInitMLPConfig(activation="swish")


def test_mlp_roles_are_linear_layers_and_a_head():
    model = hv.from_config(VarInitMLPConfig(input_size=8, hidden_sizes=[16, 16, 16], num_labels=3), seed=0)
    keys = [e.key for e, _ in tracked_roles(model)]
    assert keys == ["layers.0.linear", "layers.1.linear", "layers.2.linear", "head"]


def test_the_architecture_table_finds_the_mlp_through_the_lab_entry_point():
    assert get_architecture("varinit_mlp") is VARINIT_MLP
    assert config_options("varinit_mlp") == ("n_layer", "n_embd", "input_size", "num_labels")
    mlp = build_config("varinit_mlp", n_layer=2, num_labels=3)
    assert isinstance(mlp, VarInitMLPConfig) and mlp.hidden_sizes == [256, 256] and mlp.num_labels == 3
