"""Rules: the realised std and distribution of every rule, per role and Q/K/V slice; spec validation."""

import math

import numpy as np
import pytest
import torch
from scipy import stats

import hf_varinit as hv
from hf_varinit.errors import RuleError
from hf_varinit.init.builtin_rules import KaimingRule
from hf_varinit.init.roles import iter_roles


def _tensor(model, key):
    for entry, param, _ in iter_roles(model):
        if entry.key == key:
            return entry.view(param).detach().flatten().numpy()
    raise KeyError(key)


def _assert_std(values, expected, rel=0.03):
    assert np.std(values) == pytest.approx(expected, rel=rel)


@pytest.mark.parametrize(
    "rule", ["normal:std=0.05", "trunc_normal:std=0.05", "xavier", "kaiming", "kaiming:mode=fan_out", "lecun", "gpt2"]
)
def test_realised_std_matches_the_plan_for_every_weight(gpt2_config, rule):
    model = hv.from_config(gpt2_config, rule, seed=0)
    plan = {row.key: row for row in hv.init_plan(model, rule) if row.std is not None}
    for key in ("layers.0.q", "layers.1.v", "layers.0.attn_out", "layers.1.mlp_in", "layers.1.mlp_out", "embedding"):
        _assert_std(_tensor(model, key), plan[key].std)


def test_kaiming_c_fc_gets_fan_in_n_embd(gpt2_config):
    model = hv.from_config(gpt2_config, "kaiming", seed=0)
    row = next(r for r in hv.init_plan(model, "kaiming") if r.key == "layers.0.mlp_in")
    assert row.fan_in == gpt2_config.n_embd
    _assert_std(model.transformer.h[0].mlp.c_fc.weight.detach().numpy(), math.sqrt(2 / gpt2_config.n_embd))


def test_xavier_uniform_is_uniform_and_normal_is_not(gpt2_config):
    uniform = _tensor(hv.from_config(gpt2_config, "xavier:dist=uniform", seed=0), "layers.0.mlp_in")
    normal = _tensor(hv.from_config(gpt2_config, "xavier", seed=0), "layers.0.mlp_in")
    bound = math.sqrt(6 / (256 + 1024))
    assert stats.kstest(uniform, "uniform", args=(-bound, 2 * bound)).pvalue > 1e-3
    assert stats.kstest(normal, "uniform", args=(-bound, 2 * bound)).pvalue < 1e-6
    sigma = math.sqrt(2 / (256 + 1024))
    assert stats.kstest(normal, "norm", args=(0, sigma)).pvalue > 1e-3
    assert stats.kstest(uniform, "norm", args=(0, sigma)).pvalue < 1e-6


def test_trunc_normal_stays_within_the_cutoff(gpt2_config):
    values = _tensor(hv.from_config(gpt2_config, "trunc_normal:std=0.1", seed=0), "layers.0.q")
    assert np.abs(values).max() <= 0.2 + 1e-6
    assert stats.kstest(values, stats.truncnorm(-2, 2, scale=0.1).cdf).pvalue > 1e-3


def test_gpt2_rule_reproduces_hf_scaled_c_proj(gpt2_config):
    model = hv.from_config(gpt2_config, "gpt2", seed=0)
    expected = 0.02 / math.sqrt(2 * gpt2_config.n_layer)
    _assert_std(model.transformer.h[1].attn.c_proj.weight.detach().numpy(), expected)
    _assert_std(model.transformer.h[1].mlp.c_proj.weight.detach().numpy(), expected)
    hf = hv.from_config(gpt2_config, "hf", seed=0)
    _assert_std(hf.transformer.h[1].attn.c_proj.weight.detach().numpy(), expected)


def test_qkv_slices_can_get_three_different_stds(gpt2_config):
    rule = {"name": "optimal", "variances": {"layers.0.q": 1e-4, "layers.0.k": 4e-4, "layers.0.v": 1.6e-3}}
    model = hv.from_config(gpt2_config, rule, seed=0)
    for key, std in (("layers.0.q", 0.01), ("layers.0.k", 0.02), ("layers.0.v", 0.04)):
        _assert_std(_tensor(model, key), std)
    fallback = next(r for r in hv.init_plan(model, rule) if r.key == "layers.1.q")
    assert fallback.note.startswith("fallback kaiming")


def test_biases_zero_and_norms_one(gpt2_config):
    model = hv.from_config(gpt2_config, "kaiming", seed=0)
    assert torch.count_nonzero(model.transformer.h[0].attn.c_attn.bias) == 0
    assert torch.all(model.transformer.h[0].ln_1.weight == 1)


@pytest.mark.parametrize(
    "spec, message",
    [
        ("nope", "unknown init rule 'nope'; valid rules:"),
        ("normal:std=-1", "std=-1.0 is invalid"),
        ("normal:std=0", "std=0.0 is invalid"),
        ("normal:std=nan", "std=nan is invalid"),
        ("normal:std=inf", "std=inf is invalid"),
        ("normal:std=abc", "not a valid"),
        ({"name": "normal", "std": True}, "std=True is invalid"),
        ("kaiming:a=nan", "a=nan is invalid"),
        ("normal:sdt=0.1", "has no key 'sdt'; valid keys: std"),
        ("kaiming:mode=fan_middle", "valid choices: fan_in, fan_out"),
        ("xavier:dist=cauchy", "valid choices: normal, uniform"),
        ("optimal", "needs exactly one of report="),
        ("", "is empty"),
        ({"std": 0.1}, "needs a 'name' key"),
    ],
)
def test_bad_specs_raise_clear_errors(spec, message):
    with pytest.raises(RuleError, match=message.replace("(", r"\(").replace(")", r"\)")):
        hv.get_rule(spec)


def test_rule_errors_are_value_errors():
    with pytest.raises(ValueError):
        hv.get_rule("normal:std=-1")


def test_spec_round_trips():
    for spec in ("kaiming:mode=fan_out", "normal:std=0.05", "xavier:dist=uniform", "gpt2", "hf"):
        assert hv.get_rule(spec).spec == spec
        assert hv.get_rule(hv.get_rule(spec).spec) == hv.get_rule(spec)


def test_register_rule_requires_unique_names():
    with pytest.raises(RuleError, match="already registered"):
        hv.register_rule("kaiming", KaimingRule)
    assert {"hf", "normal", "trunc_normal", "xavier", "kaiming", "lecun", "gpt2", "optimal"} <= set(hv.list_rules())


def test_custom_rule_via_registry(tiny_gpt2_config):
    from dataclasses import dataclass

    @dataclass(frozen=True)
    class Constant(hv.InitRule):
        name = "test_constant"
        value: float = 0.5

        def weight_init(self, entry, ctx):
            return hv.Init("constant", value=self.value)

    hv.register_rule("test_constant", Constant, overwrite=True)
    model = hv.from_config(tiny_gpt2_config, "test_constant:value=0.25", seed=0)
    assert torch.all(model.transformer.h[0].mlp.c_fc.weight == 0.25)


def test_custom_rule_values_are_type_checked_against_real_annotations():
    from dataclasses import dataclass

    @dataclass(frozen=True)
    class Scaled(hv.InitRule):  # annotations are real types here, not strings
        name = "test_scaled"
        scale: float = 0.5

        def weight_init(self, entry, ctx):
            return hv.Init("normal", std=self.scale / entry.fan_in ** 0.5)

    hv.register_rule("test_scaled", Scaled, overwrite=True)
    assert hv.get_rule({"name": "test_scaled", "scale": 2}).scale == 2.0
    for bad in ([1], None, True, {"x": 1}):
        with pytest.raises(RuleError, match="scale must be float"):
            hv.get_rule({"name": "test_scaled", "scale": bad})
