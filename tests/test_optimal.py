"""The optimal rule read from variance reports: s0^2 = V(W) per slice, mismatches refused, depth mapped."""

import numpy as np
import pytest
import torch
from transformers import GPT2Config, GPT2LMHeadModel, LlamaConfig

import hf_varinit as hv
from hf_varinit.errors import ConfigError, ReportError
from hf_varinit.init.roles import iter_roles
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
    with pytest.raises(ReportError, match=r"tracked tensor 'layers.0.mlp_gate' has shape \(128, 64\) in the report "
                       r"but \(256, 64\) in the model \(config: intermediate_size 128 vs 256\)"):
        hv.from_config(llama(256), f"optimal:report={report}")


def _small_gpt2(**changes):
    sizes = dict(n_layer=2, n_embd=32, n_head=4, vocab_size=100, n_positions=32, bos_token_id=0, eos_token_id=0)
    return GPT2Config(**{**sizes, **changes})


def test_report_is_not_refused_over_a_head_count_that_changes_no_tensor(tmp_path):
    report = _synthetic_report(_small_gpt2(n_head=4), tmp_path, _qkv_value)
    rows = {r.key: r for r in hv.init_plan(hv.from_config(_small_gpt2(n_head=8)), f"optimal:report={report}")}
    assert rows["layers.1.k"].std == pytest.approx(V["k"] ** 0.5)


@pytest.mark.parametrize("change, key, theirs, mine", [
    ({"vocab_size": 120}, "embedding", (100, 32), (120, 32)),
    ({"n_positions": 64}, "position", (32, 32), (64, 32)),
])
def test_report_of_other_embedding_shapes_is_refused_naming_the_tensor(tmp_path, change, key, theirs, mine):
    report = _synthetic_report(_small_gpt2(), tmp_path)
    with pytest.raises(ReportError) as exc:
        hv.from_config(_small_gpt2(**change), f"optimal:report={report}")
    message = str(exc.value)
    assert f"tracked tensor {key!r} has shape {theirs} in the report but {mine} in the model" in message
    assert "hv.from_report(" in message  # the fix


def test_report_of_other_shapes_and_depth_names_the_shape_first(tmp_path):
    report = _synthetic_report(_small_gpt2(), tmp_path)
    spec = f"optimal:report={report},allow-depth-interpolation"
    with pytest.raises(ReportError, match="tracked tensor 'embedding'"):
        hv.from_config(_small_gpt2(n_layer=4, vocab_size=120), spec)
    hv.init_plan(hv.from_config(_small_gpt2(n_layer=4)), spec)  # depth alone is mapped


def _assert_realises(model, report_folder):
    """Every tracked tensor / Q/K/V slice of ``model`` has the variance its report gives it."""
    variances = VarianceReport.load(report_folder).variances()
    checked = 0
    for entry, param, _ in iter_roles(model):
        if entry.tracked and entry.key in variances:
            assert entry.view(param).detach().var().item() == pytest.approx(variances[entry.key], rel=0.05), entry.key
            checked += 1
    assert checked >= 3 * model.config.n_layer


def test_from_report_builds_the_reports_model_and_realises_its_variances(gpt2_config, tmp_path):
    report = _synthetic_report(gpt2_config, tmp_path, _qkv_value)
    for source in (report, str(report), VarianceReport.load(report)):
        model = hv.from_report(source, seed=0)
        assert isinstance(model, GPT2LMHeadModel)
        assert (model.config.n_layer, model.config.n_embd, model.config.vocab_size) == (2, 256, 1000)
        _assert_realises(model, report)
    assert hv.from_report(report, seed=3).config.varinit_rule == f"optimal:report={report}"
    same = [hv.from_report(report, seed=3).transformer.h[0].attn.c_attn.weight for _ in range(2)]
    assert torch.equal(*same)


def test_from_report_applies_config_overrides(tmp_path):
    small = _small_gpt2(n_layer=4)
    report = _synthetic_report(small, tmp_path, lambda key: 1e-3 * (1 + int(key.split(".")[1])) if
                               key.startswith("layers.") else 1e-3)
    deeper = hv.from_report(report, seed=0, n_layer=8, n_head=8)  # depth mapped by relative depth
    assert (deeper.config.n_layer, deeper.config.n_head) == (8, 8)
    rows = {r.key: r for r in hv.init_plan(deeper, deeper.varinit_init_rule)}
    assert rows["layers.7.q"].std ** 2 == pytest.approx(4e-3)
    with pytest.raises(ReportError, match="tracked tensor 'embedding' has shape"):
        hv.from_report(report, vocab_size=300)
    with pytest.raises(ReportError, match="measured at width 32, the model asked for has 64; pass width_transfer"):
        hv.from_report(report, n_embd=64)
    with pytest.raises(ConfigError, match="no entry 'n_layers'"):
        hv.from_report(report, n_layers=8)


def test_unreadable_report_path_is_a_report_error(tiny_gpt2_config):
    with pytest.raises(ReportError, match="cannot be read: File name too long"):
        hv.init_plan(hv.from_config(tiny_gpt2_config), f"optimal:report={'x' * 300}")


# --- roles: which tensors take V(W) (the ablations of the LM study) -------------------------------------------------
def test_roles_filter_gives_v_w_to_the_named_roles_and_the_fallback_to_the_rest(gpt2_config, tmp_path):
    report = _synthetic_report(gpt2_config, tmp_path, _qkv_value)
    spec = f"optimal:report={report},roles=q+k+v,fallback=gpt2"
    rows = {r.key: r for r in hv.init_plan(hv.from_config(gpt2_config, seed=0), spec)}
    fallback = {r.key: r for r in hv.init_plan(hv.from_config(gpt2_config, seed=0), "gpt2")}
    for role in "qkv":
        row = rows[f"layers.1.{role}"]
        assert row.std ** 2 == pytest.approx(V[role]) and "roles q+k+v" in row.note
    for key in ("layers.0.attn_out", "layers.1.mlp_in", "layers.1.mlp_out", "embedding", "position"):
        assert rows[key].std == pytest.approx(fallback[key].std) and rows[key].note == "fallback gpt2", key
    # and the weights are drawn that way: Q from the report, the residual projection at gpt2's scaled std
    model = hv.from_config(gpt2_config, spec, seed=0)
    d = gpt2_config.n_embd
    assert model.transformer.h[1].attn.c_attn.weight[:, :d].var().item() == pytest.approx(V["q"], rel=0.05)
    assert model.transformer.h[1].attn.c_proj.weight.std().item() == pytest.approx(fallback["layers.1.attn_out"].std,
                                                                                   rel=0.05)


def test_roles_filter_composes_with_depth_interpolation(tmp_path):
    report = _synthetic_report(GPT2Config(n_layer=2, n_embd=32, n_head=4, vocab_size=100), tmp_path, _qkv_value)
    deeper = GPT2Config(n_layer=4, n_embd=32, n_head=4, vocab_size=100)
    spec = f"optimal:report={report},allow-depth-interpolation,roles=embedding+attn_out"
    rows = {r.key: r for r in hv.init_plan(hv.from_config(deeper, seed=0), spec)}
    assert rows["layers.3.attn_out"].std ** 2 == pytest.approx(2.5e-3)
    assert rows["embedding"].std ** 2 == pytest.approx(2.5e-3)
    assert rows["layers.3.q"].note == "fallback kaiming"


@pytest.mark.parametrize("roles, match", [("qq", r"roles='qq' names unknown role 'qq'; known roles: q\+k\+v"),
                                          ("mlp_gate", r"roles='mlp_gate' selects none of the tensors .*roles it has"),
                                          ("", r"roles='' must name tensor roles joined by '\+'")])
def test_bad_roles_are_a_rule_error_naming_the_value(gpt2_config, tmp_path, roles, match):
    report = _synthetic_report(gpt2_config, tmp_path)
    with pytest.raises(hv.HFVarInitError, match=match):
        hv.from_config(gpt2_config, f"optimal:report={report},roles={roles}")
