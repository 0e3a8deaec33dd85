"""Reports from trained checkpoints, read tensor by tensor (issue: reports from any checkpoint)."""

import json
import pickle
import re
import tracemalloc

import numpy as np
import pytest
import torch
import yaml
from huggingface_hub import ModelCard
from transformers import AutoModelForCausalLM, GPT2Config, LlamaConfig

import hf_varinit as hv
from hf_varinit.cli.main import main as cli_main
from hf_varinit.errors import ReportError
from hf_varinit.record import from_checkpoint
from hf_varinit.record.from_checkpoint import stats_from_checkpoint


def _trained_like(config, seed=0):
    """A model whose tensors have distinct, non-init variances (a stand-in for trained weights)."""
    model = hv.from_config(config, "kaiming", seed=seed)
    with torch.no_grad():
        for i, p in enumerate(model.parameters()):
            p.mul_(1 + 0.1 * i).add_(0.01 * i)
    return model


def _recomputed(model):
    recorder = hv.VarianceRecorder(model)
    values = recorder.compute().numpy()
    return dict(zip(recorder.keys, values[:, 0])), dict(zip(recorder.keys, values[:, 1]))


@pytest.mark.parametrize("shard", [None, "200KB"])
def test_checkpoint_stats_equal_the_loaded_models(tmp_path, shard):
    config = GPT2Config(n_layer=3, n_embd=64, n_head=4, vocab_size=300, n_positions=32, bos_token_id=0,
                        eos_token_id=0)
    _trained_like(config).save_pretrained(tmp_path, **({"max_shard_size": shard} if shard else {}))
    assert (tmp_path / "model.safetensors.index.json").exists() == bool(shard)
    stats = stats_from_checkpoint(tmp_path)
    var, mean = _recomputed(AutoModelForCausalLM.from_pretrained(tmp_path))
    assert set(stats.keys) == set(var)
    for key in stats.keys:
        np.testing.assert_allclose(stats.series(key, "var")[0], var[key], rtol=1e-5)
        np.testing.assert_allclose(stats.series(key, "mean")[0], mean[key], rtol=1e-4, atol=1e-7)
    assert stats.metadata["source"] == "checkpoint"


def test_report_from_model_cli_writes_a_checkpoint_report(tmp_path):
    config = GPT2Config(n_layer=2, n_embd=64, n_head=4, vocab_size=300, n_positions=32, bos_token_id=0,
                        eos_token_id=0)
    _trained_like(config).save_pretrained(tmp_path / "ckpt")
    assert cli_main(["report", "--from-model", str(tmp_path / "ckpt"), "--output", str(tmp_path / "rep")]) == 0
    doc = json.loads((tmp_path / "rep" / "steady_state.json").read_text())
    q = doc["tensors"]["layers.1.q"]
    assert q["stationary"] is None and q["v_w"] > 0  # one snapshot: V(W) is its second moment, nothing is judged
    card = (tmp_path / "rep" / "README.md").read_text()
    front = yaml.safe_load(card.split("---")[1])
    assert front["library_name"] == "hf_varinit"
    assert "final weights" in card


def test_pickle_checkpoints_are_refused_and_never_unpickled(tmp_path):
    sentinel = tmp_path / "unpickled"

    class Payload:
        def __reduce__(self):
            return (open, (str(sentinel), "w"))

    config = GPT2Config(n_layer=1, n_embd=32, n_head=4, vocab_size=100, bos_token_id=0, eos_token_id=0)
    config.save_pretrained(tmp_path)
    (tmp_path / "pytorch_model.bin").write_bytes(pickle.dumps(Payload()))
    with pytest.raises(ReportError, match="pickle-based weights are never loaded"):
        stats_from_checkpoint(tmp_path)
    assert not sentinel.exists()


def test_memory_is_bounded_by_the_largest_tensor_not_the_checkpoint(tmp_path):
    config = GPT2Config(n_layer=8, n_embd=128, n_head=4, vocab_size=500, n_positions=64, bos_token_id=0,
                        eos_token_id=0)
    model = hv.from_config(config, "kaiming", seed=0)
    model.save_pretrained(tmp_path, max_shard_size="500KB")
    total = sum(p.numel() * 4 for p in model.parameters())
    largest = max(p.numel() * 4 for p in model.parameters())
    del model
    stats_from_checkpoint(tmp_path)  # warm caches (config classes, imports)
    tracemalloc.start()
    stats_from_checkpoint(tmp_path)
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    assert peak < 3 * largest + 1_000_000 < total


def test_llama_checkpoint_report_initialises_a_deeper_model(tmp_path):
    small = LlamaConfig(num_hidden_layers=4, hidden_size=64, num_attention_heads=4, num_key_value_heads=2,
                        intermediate_size=128, vocab_size=100)
    _trained_like(small).save_pretrained(tmp_path / "ckpt")
    assert cli_main(["report", "--from-model", str(tmp_path / "ckpt"), "--output", str(tmp_path / "rep")]) == 0
    deep = LlamaConfig(num_hidden_layers=8, hidden_size=64, num_attention_heads=4, num_key_value_heads=2,
                       intermediate_size=128, vocab_size=100)
    spec = f"optimal:report={tmp_path / 'rep'},allow-depth-interpolation"
    model = hv.from_config(deep, spec, seed=0)
    rows = {r.key: r for r in hv.init_plan(model, spec)}
    source = json.loads((tmp_path / "rep" / "steady_state.json").read_text())["tensors"]
    assert rows["layers.0.k"].std ** 2 == pytest.approx(source["layers.0.k"]["v_w"], rel=1e-5)
    assert rows["layers.7.k"].std ** 2 == pytest.approx(source["layers.3.k"]["v_w"], rel=1e-5)
    assert rows["layers.7.k"].note == "interpolated from layer 3"
    assert model.model.layers[7].self_attn.k_proj.weight.var().item() == pytest.approx(
        source["layers.3.k"]["v_w"], rel=0.1)


@pytest.fixture
def saved_gpt2(tmp_path, tiny_gpt2_config):
    """A real tiny GPT-2 built under the `gpt2` rule and saved with save_pretrained."""
    hv.from_config(tiny_gpt2_config, rule="gpt2", seed=0).save_pretrained(tmp_path / "ckpt")
    return tmp_path / "ckpt"


def test_report_of_final_weights_states_what_it_is_and_claims_nothing_about_training(saved_gpt2, tmp_path):
    assert cli_main(["report", "--from-model", str(saved_gpt2), "--output", str(tmp_path / "rep")]) == 0
    text = (tmp_path / "rep" / "README.md").read_text()
    assert f"statistics of one set of weights: {saved_gpt2}, not a training record" in text.lower()
    for claim in ("stationary", "steady state", "steady-state", "equilibrat", "during pretraining", "reached"):
        assert claim not in text.lower(), claim
    assert re.search(r"\| init rule \| gpt2 \|", text)  # config.varinit_rule, not the "hf" of the meta model
    assert ModelCard.load(tmp_path / "rep" / "README.md").data.init_rule == "gpt2"
    assert sorted(p.name for p in (tmp_path / "rep").glob("*.png")) == ["steady_state_vs_depth.png"]
    doc = json.loads((tmp_path / "rep" / "steady_state.json").read_text())
    assert doc["layers"] == {} and all(t["equilibration_step"] is None for t in doc["tensors"].values())
    report = hv.VarianceReport.load(tmp_path / "rep")
    assert report.nonstationary_keys == [] and set(report.variances("error")) == set(doc["tensors"])


def test_report_of_weights_without_a_recorded_rule_says_unknown(saved_gpt2, tmp_path):
    config = json.loads((saved_gpt2 / "config.json").read_text())
    del config["varinit_rule"]
    (saved_gpt2 / "config.json").write_text(json.dumps(config))
    assert stats_from_checkpoint(saved_gpt2).metadata["rule"] is None
    folder = hv.VarianceReport.from_stats(stats_from_checkpoint(saved_gpt2)).save(tmp_path / "rep")
    assert "| init rule | unknown |" in (folder / "README.md").read_text()


def test_report_of_a_hub_checkpoint_names_it_as_base_model(saved_gpt2, tmp_path, monkeypatch):
    fetched = []
    monkeypatch.setattr(from_checkpoint, "snapshot_download",
                        lambda repo_id, **kwargs: fetched.append(repo_id) or str(saved_gpt2))
    monkeypatch.chdir(tmp_path)
    assert cli_main(["report", "--from-model", "someone/tiny-gpt2", "--output", "rep"]) == 0
    assert fetched == ["someone/tiny-gpt2"]
    card = ModelCard.load(tmp_path / "rep" / "README.md")
    assert card.data.base_model == "someone/tiny-gpt2" and card.data.license == "apache-2.0"
    config = json.loads((tmp_path / "rep" / "config.json").read_text())
    assert config["n_embd"] == 32 and config["varinit_rule"] == "gpt2"
    assert "n_embd" not in card.content.split("---")[1]  # the config is a file, not the YAML header
    assert hv.VarianceReport.load(tmp_path / "rep").base_model == "someone/tiny-gpt2"


def test_a_local_checkpoint_has_no_base_model(saved_gpt2, tmp_path):
    folder = hv.VarianceReport.from_stats(stats_from_checkpoint(saved_gpt2)).save(tmp_path / "rep")
    assert ModelCard.load(folder / "README.md").data.base_model is None
