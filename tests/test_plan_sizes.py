"""A report's own architecture at another size: `hf-varinit plan --report R --n-layer N --n-embd D` and
`hv.from_report(R, n_layer=..., n_embd=..., width_transfer=...)`, through the transfer options."""

import json

import pytest

import hf_varinit as hv
from hf_varinit.cli.main import main

BUNDLED = "gpt2-12l-tiny-qkv-dynamics"  # 12 layers, n_embd 128, 4 heads, vocab 4096, 128 positions


def _plan(capsys, *argv):
    code = main(["plan", "--report", BUNDLED, "--format", "json", *argv])
    captured = capsys.readouterr()
    return code, captured


def _rows(captured):
    return {r["key"]: r for r in json.loads(captured.out) if r["key"]}


def test_plan_at_another_depth_needs_the_option_and_names_both_depths(capsys):
    code, captured = _plan(capsys, "--n-layer", "4")
    assert code == 1
    err = captured.err.strip()
    assert len(err.splitlines()) == 1 and "12 layers" in err and "4" in err and "allow-depth-interpolation" in err


@pytest.mark.parametrize("option", [["--allow-depth-interpolation"],
                                    ["--rule", f"optimal:report={BUNDLED},allow-depth-interpolation"]])
def test_plan_at_another_depth_with_the_option_maps_by_relative_depth(capsys, option):
    code, captured = _plan(capsys, "--n-layer", "4", *option)
    assert code == 0, captured.err
    rows = _rows(captured)
    assert {r["layer"] for r in rows.values() if r["layer"] is not None} == {0, 1, 2, 3}
    assert "interpolated from layer" in rows["layers.3.q"]["note"]  # the last layer is the report's last layer
    assert "[transformers]" not in captured.err


def test_plan_at_another_width_needs_the_option_and_names_both_widths(capsys):
    code, captured = _plan(capsys, "--n-embd", "256")
    assert code == 1
    err = captured.err.strip()
    assert len(err.splitlines()) == 1 and "128" in err and "256" in err and "width-transfer" in err


def test_plan_at_another_width_and_depth_with_fan_in_transfer(capsys):
    code, same = _plan(capsys)
    assert code == 0
    code, captured = _plan(capsys, "--n-embd", "256", "--n-layer", "6", "--width-transfer", "fan-in")
    assert code == 0, captured.err
    wide, base = _rows(captured), _rows(same)
    assert wide["layers.0.q"]["fan_in"] == 256 and wide["layers.0.q"]["fan_out"] == 256  # head dim kept: 8 heads
    # V(W) scaled by fan_in 128 / 256: the std by 1/sqrt(2); layer 0 maps to the report's layer 0
    assert wide["layers.0.q"]["std"] == pytest.approx(base["layers.0.q"]["std"] / 2 ** 0.5, rel=1e-6)
    assert max(r["layer"] for r in wide.values() if r["layer"] is not None) == 5


def test_plan_another_size_of_the_reports_family_with_positions(capsys):
    code = main(["plan", "--model", "gpt2", "--n-layer", "6", "--n-embd", "128", "--n-head", "4", "--vocab-size",
                 "4096", "--n-positions", "128", "--rule", f"optimal:report={BUNDLED},allow-depth-interpolation"])
    captured = capsys.readouterr()
    assert code == 0, captured.err
    assert "bos_token_id" not in captured.err and "eos_token_id" not in captured.err


def test_plan_refuses_transfer_flags_without_a_report(capsys):
    assert main(["plan", "--model", "gpt2", "--width-transfer", "fan-in"]) == 1
    assert "--width-transfer apply with --report" in capsys.readouterr().err


def test_from_report_at_another_width_needs_width_transfer():
    with pytest.raises(hv.ReportError, match=r"width 128.*256.*width_transfer"):
        hv.from_report(BUNDLED, n_embd=256, n_head=8)


def test_from_report_at_another_width_with_fan_in_transfer():
    same = hv.init_plan(hv.from_report(BUNDLED, seed=0), f"optimal:report={BUNDLED}")
    model = hv.from_report(BUNDLED, seed=0, n_embd=256, n_head=8, width_transfer="fan-in")
    assert model.config.n_embd == 256 and model.config.vocab_size == 4096
    base_q = next(r.std for r in same if r.key == "layers.0.q")
    q = model.transformer.h[0].attn.c_attn.weight[:, :256]
    assert q.std().item() == pytest.approx(base_q / 2 ** 0.5, rel=0.05)  # 65k draws: a few % of sampling noise


def test_from_report_takes_the_librarys_size_names_and_refuses_a_bad_transfer():
    model = hv.from_report(BUNDLED, seed=0, n_layer=4)
    assert model.config.n_layer == 4
    with pytest.raises(hv.ConfigError, match="width_transfer='sideways'"):
        hv.from_report(BUNDLED, n_embd=256, width_transfer="sideways")


def test_copy_transfer_carries_v_w_unchanged_to_another_width(capsys):
    code, same = _plan(capsys)
    code, captured = _plan(capsys, "--n-embd", "256", "--width-transfer", "copy")
    assert code == 0, captured.err
    wide, base = _rows(captured), _rows(same)
    for key in ("layers.0.q", "layers.11.mlp_out", "embedding"):
        assert wide[key]["std"] == pytest.approx(base[key]["std"], rel=1e-9)
        assert "alpha=0" in wide[key]["note"]


@pytest.mark.parametrize("name, overrides", [
    ("gpt2-12l-lm-study-w128", {}),
    ("gpt2-12l-lm-study-w64-w128", {"n_embd": 512, "n_layer": 24, "width_transfer": "fit"}),  # a size never measured
    ("llama-8l-lm-study-h128", {"n_layer": 4}),
    ("llama-8l-lm-study-h64-h128", {"n_embd": 192, "n_layer": 10, "width_transfer": "fit-pooled"}),  # held out
])
def test_the_bundled_lm_study_reports_initialise_a_model_by_name(name, overrides):
    import torch

    with torch.device("meta"):
        model = hv.from_report(name, **overrides)
    assert model.config.varinit_rule.startswith(f"optimal:report={name}")
    rows = hv.init_plan(model, model.config.varinit_rule)
    assert any(w in r.note for r in rows for w in ("V(W)", "fit alpha", "fit-pooled alpha", "interpolated"))


def test_a_bundled_report_costs_the_user_no_pilot():
    from hf_varinit.report.cost import pilot_cost

    cost = pilot_cost("optimal:report=gpt2-12l-lm-study-w64-w128,width-transfer=fit")
    assert (cost["tokens"], cost["flops"]) == (0, 0) and "bundled" in cost["note"]


@pytest.mark.parametrize("sizes, expected", [
    ({"n_embd": 192, "n_layer": 10}, {"num_attention_heads": 6, "head_dim": 32, "intermediate_size": 512}),
    ({"n_embd": 192, "n_head": 4}, {"num_attention_heads": 4, "head_dim": 48, "intermediate_size": 512}),
])
def test_plan_and_from_report_build_the_same_llama_at_a_new_width(capsys, sizes, expected):
    """The heads follow a new width (the report's head dimension 32 kept, or the head dimension follows the heads
    given), and so does the SwiGLU MLP: a 192-wide Llama attends over 192 dimensions, not the report's 128."""
    import torch

    name = "llama-8l-lm-study-h64-h128"  # 8 layers, hidden 128, 4 heads of 32, MLP 344
    with torch.device("meta"):
        model = hv.from_report(name, width_transfer="fit-pooled", **sizes)
    assert {k: getattr(model.config, k) for k in expected} == expected
    q = model.model.layers[0].self_attn.q_proj.weight
    assert tuple(q.shape) == (192, 192)
    argv = [x for key, value in sizes.items() for x in (f"--{key.replace('_', '-')}", str(value))]
    code = main(["plan", "--report", name, "--format", "json", "--width-transfer", "fit-pooled",
                 "--allow-depth-interpolation", *argv])
    rows = _rows(capsys.readouterr())
    assert code == 0
    planned = {r["key"]: (r["fan_in"], r["fan_out"], r["std"]) for r in rows.values() if r["key"].startswith("layers.")}
    built = {r.key: (r.fan_in, r.fan_out, r.std) for r in hv.init_plan(model, model.config.varinit_rule)
             if r.key and r.key.startswith("layers.")}
    assert set(planned) == set(built)
    for key, (fan_in, fan_out, std) in built.items():
        assert planned[key][:2] == (fan_in, fan_out) and planned[key][2] == pytest.approx(std, rel=1e-9), key


def test_every_bundled_report_card_tells_the_user_its_own_name():
    """A bundled card's usage lines (`hv.from_report`, the rule, `plan --report`) name the bundled report, which any
    install can load, not the folder it was made in on the maintainers' machine."""
    import re

    from hf_varinit.reference_reports import bundled_reports

    for name, folder in bundled_reports().items():
        text = (folder / "README.md").read_text()
        used = re.findall(r'hv\.from_report\("([^"]+)"|`optimal:report=([^`,]+)`|plan --report "([^"]+)"', text)
        assert len(used) == 3 and {x for row in used for x in row if x} == {name}, (name, used)
        assert "another width or tensor shape is refused" not in text
