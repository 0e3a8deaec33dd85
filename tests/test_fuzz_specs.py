"""Fuzzing the rule-spec parser: any input parses to a rule or raises the library's own error."""

import dataclasses

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from transformers import GPT2Config

import hf_varinit as hv
from hf_varinit.errors import HFVarInitError, RuleError
from hf_varinit.init.rules import _REGISTRY

KEYS = ["std", "mode", "dist", "gain", "nonlinearity", "a", "cutoff", "embedding_std", "report", "fallback",
        "allow-depth-interpolation", "nonstationary", "variances", "x"]
VALUES = st.one_of(
    st.sampled_from(["0.02", "-1", "0", "nan", "inf", "-inf", "1e400", "1e-400", "fan_in", "fan_out", "normal",
                     "uniform", "relu", "tanh", "true", "no", "kaiming", "optimal", "", "=", ":"]),
    st.text(max_size=8),
)


def _accepts(spec):
    try:
        rule = hv.get_rule(spec)
    except HFVarInitError:
        return
    assert isinstance(rule, hv.InitRule)
    assert isinstance(rule.spec, str)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.text(max_size=60))
def test_any_text_parses_or_raises_the_library_error(spec):
    _accepts(spec)


@settings(max_examples=300, deadline=None)
@given(st.sampled_from(hv.list_rules()), st.lists(st.tuples(st.sampled_from(KEYS), VALUES), max_size=4))
def test_structured_specs_parse_or_raise_the_library_error(name, pairs):
    _accepts(name + ":" + ",".join(f"{k}={v}" for k, v in pairs))


@settings(max_examples=200, deadline=None)
@given(st.dictionaries(st.sampled_from(["name", *KEYS]),
                       st.one_of(st.floats(), st.text(max_size=5), st.booleans(), st.none(),
                                 st.dictionaries(st.text(max_size=3), st.floats(), max_size=2))))
def test_dict_specs_parse_or_raise_the_library_error(spec):
    _accepts(spec)


# JSON-like values, nested: what a YAML or JSON config can put in a rule dict.
JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=6),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=4), inner, max_size=3),
    max_leaves=6,
)


def _rule_keys(name):
    """The keys a registered rule takes (its dataclass fields), plus one it does not."""
    factory = _REGISTRY[name]
    fields = [f.name for f in dataclasses.fields(factory) if f.init] if dataclasses.is_dataclass(factory) else []
    return st.sampled_from([*fields, "x"])


@st.composite
def rule_dicts(draw):
    name = draw(st.sampled_from(hv.list_rules()))
    return {"name": name, **draw(st.dictionaries(_rule_keys(name), JSON, max_size=4))}


@pytest.fixture(scope="module")
def meta_gpt2():
    with torch.device("meta"):
        return hv.from_config(GPT2Config(n_layer=2, n_embd=32, n_head=4, vocab_size=64, n_positions=16))


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(rule_dicts())
def test_dict_specs_with_any_json_values_load_or_raise_the_library_error(meta_gpt2, spec):
    try:
        rule = hv.get_rule(spec)
        hv.init_plan(meta_gpt2, rule)  # binding and resolving every tensor must not fail either
    except HFVarInitError:
        return
    assert isinstance(rule.spec, str)


@pytest.mark.parametrize("spec", [
    {"name": "normal", "std": [0.02]},
    {"name": "normal", "std": None},
    {"name": "kaiming", "mode": {"fan": "in"}},
    {"name": "kaiming", "a": 10**400},
    {"name": "xavier", "gain": [1]},
    {"name": "gpt2", "std": False},
    {"name": "optimal", "report": ["a"]},
    {"name": "optimal", "report": "r", "allow_depth_interpolation": "maybe"},
    {"name": "optimal", "variances": {"layers.0.q": [1e-3]}},
    {"name": "optimal", "variances": {"layers.0.q": None}},
    {"name": "normal", 1: 2, "x": 3},
])
def test_dict_specs_with_values_of_the_wrong_type_raise_rule_error(spec):
    with pytest.raises(RuleError):
        hv.get_rule(spec)
