"""Fuzzing the rule-spec parser: any input parses to a rule or raises the library's own error."""

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import hf_varinit as hv
from hf_varinit.errors import HFVarInitError

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
