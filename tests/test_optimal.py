"""The optimal rule read from variance reports: s0^2 = V(W) per slice, mismatches refused, depth mapped."""

import numpy as np
import pytest
import torch
from transformers import GPT2Config, LlamaConfig

import hf_varinit as hv
from hf_varinit.errors import ReportError
from hf_varinit.record.stats_file import save_stats
from hf_varinit.report.report import VarianceReport

V = {"q": 1e-4, "k": 4e-4, "v": 9e-4}


def _synthetic_report(config, folder, value=lambda key: 2.5e-3, steps=20):
    """A report whose every tracked tensor sits at a known plateau from the first record."""
    model = hv.from_config(config, "kaiming", seed=0)
    recorder = hv.VarianceRecorder(model, every=1, rule="kaiming")
    keys = recorder.keys
    plateau = np.array([[value(k) for k in keys]] * steps, dtype=np.float32)
    save_stats(folder, step=np.arange(steps) * 10, mean=np.zeros_like(plateau), var=plateau,
               second_moment=plateau, tracked=recorder.tracked(), metadata=recorder.metadata())
    return VarianceReport.from_stats(folder).save(folder / "report")


def _qkv_value(key):
    role = key.rsplit(".", 1)[-1]
    return V.get(role, 2.5e-3)


def test_optimal_rule_realises_the_reports_per_slice_variances(gpt2_config, tmp_path):
    report = _synthetic_report(gpt2_config, tmp_path, _qkv_value)
    model = hv.from_config(gpt2_config, f"optimal:report={report}", seed=0)
    weight = model.transformer.h[1].attn.c_attn.weight.detach()
    d = gpt2_config.n_embd
    for i, role in enumerate("qkv"):
        assert weight[:, i * d : (i + 1) * d].var().item() == pytest.approx(V[role], rel=0.03)
    assert model.transformer.h[0].mlp.c_fc.weight.var().item() == pytest.approx(2.5e-3, rel=0.03)
    assert model.config.varinit_rule == f"optimal:report={report}"


def test_optimal_plan_names_the_report(gpt2_config, tmp_path):
    report = _synthetic_report(gpt2_config, tmp_path)
    row = next(r for r in hv.init_plan(hv.from_config(gpt2_config, seed=0), f"optimal:report={report}")
               if r.key == "layers.0.k")
    assert row.std == pytest.approx(0.05) and "V(W) from report" in row.note


def test_report_of_another_architecture_is_refused(gpt2_config, tmp_path):
    report = _synthetic_report(gpt2_config, tmp_path)
    llama = LlamaConfig(num_hidden_layers=2, hidden_size=256, num_attention_heads=4, intermediate_size=512,
                        vocab_size=100)
    with pytest.raises(ReportError, match="model_type 'gpt2'.*'llama'"):
        hv.from_config(llama, f"optimal:report={report}")


def test_report_of_another_width_is_refused(gpt2_config, tmp_path):
    report = _synthetic_report(gpt2_config, tmp_path)
    wider = GPT2Config(n_layer=2, n_embd=128, n_head=4, vocab_size=1000, n_positions=64, bos_token_id=0, eos_token_id=0)
    with pytest.raises(ReportError, match="hidden size 256.*128"):
        hv.from_config(wider, f"optimal:report={report}")


def test_depth_mismatch_needs_the_interpolation_flag(tmp_path):
    small = GPT2Config(n_layer=4, n_embd=64, n_head=4, vocab_size=100, n_positions=32, bos_token_id=0, eos_token_id=0)
    report = _synthetic_report(small, tmp_path, lambda key: 1e-3 * (1 + int(key.split(".")[1])) if
                               key.startswith("layers.") else 1e-3)
    deep = GPT2Config(n_layer=8, n_embd=64, n_head=4, vocab_size=100, n_positions=32, bos_token_id=0, eos_token_id=0)
    with pytest.raises(ReportError, match="4 layers but the model has 8.*allow-depth-interpolation"):
        hv.from_config(deep, f"optimal:report={report}")
    spec = f"optimal:report={report},allow-depth-interpolation"
    rows = {r.key: r for r in hv.init_plan(hv.from_config(deep, seed=0), spec)}
    # layer j of 8 sits at relative depth j/7, i.e. source position 3j/7 of layers 0..3 (V = 1e-3 * (1 + layer))
    for j in range(8):
        expected = 1e-3 * (1 + 3 * j / 7)
        assert rows[f"layers.{j}.q"].std ** 2 == pytest.approx(expected, rel=1e-6)
    assert rows["layers.3.q"].note == "interpolated from layers 1-2 (w=0.29)"
    model = hv.from_config(deep, spec, seed=0)
    assert torch.isfinite(model.transformer.h[7].attn.c_attn.weight).all()


def test_missing_report_is_a_clear_error(tiny_gpt2_config, tmp_path):
    with pytest.raises(ReportError, match="no such file or folder"):
        hv.from_config(tiny_gpt2_config, f"optimal:report={tmp_path / 'nope'}")


def test_report_with_negative_variance_is_refused(gpt2_config, tmp_path):
    import json

    report = _synthetic_report(gpt2_config, tmp_path)
    doc = json.loads((report / "steady_state.json").read_text())
    doc["tensors"]["layers.1.v"]["v_w"] = -1e-3
    (report / "steady_state.json").write_text(json.dumps(doc))
    with pytest.raises(ReportError, match="layers.1.v"):
        hv.from_config(gpt2_config, f"optimal:report={report / 'steady_state.json'}")


def test_variance_table_must_be_finite_and_positive():
    for bad in (float("nan"), float("inf"), -1.0, 0.0):
        with pytest.raises(ReportError, match="layers.0.q"):
            hv.get_rule({"name": "optimal", "variances": {"layers.0.q": bad}})


def test_report_with_other_tensor_shapes_is_refused(tmp_path):
    def llama(intermediate):
        return LlamaConfig(num_hidden_layers=2, hidden_size=64, num_attention_heads=4, num_key_value_heads=2,
                           intermediate_size=intermediate, vocab_size=100)

    report = _synthetic_report(llama(128), tmp_path)
    with pytest.raises(ReportError, match="intermediate_size=128, but the model has intermediate_size=256"):
        hv.from_config(llama(256), f"optimal:report={report}")
