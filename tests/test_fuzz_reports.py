"""Fuzzing ``steady_state.json``: a real report's document, structurally mutated (keys deleted, values swapped for
other types, non-integer layer indices), loads and plans, or raises the library's own one-line error naming the
field. Deterministic (``derandomize=True``)."""

import itertools
import json
import math

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import hf_varinit as hv
from hf_varinit.errors import HFVarInitError, ReportError
from hf_varinit.report.schema import validate_steady_state

FUZZ = dict(derandomize=True, deadline=None, database=None,
            suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
BUNDLED = "gpt2-12l-tiny-qkv-dynamics"
DOC = json.loads((hv.VarianceReport.load(BUNDLED).stats.path.parent / "steady_state.json").read_text())
_COUNTER = itertools.count()


def _paths(obj, prefix=()):
    """Every path (tuple of keys / indices) into a JSON document, depth first."""
    if isinstance(obj, dict):
        for k, v in obj.items():
            yield prefix + (k,)
            yield from _paths(v, prefix + (k,))
    elif isinstance(obj, list):
        for i, v in enumerate(obj):
            yield prefix + (i,)
            yield from _paths(v, prefix + (i,))


PATHS = list(_paths(DOC))
# the fields the model is rebuilt from weigh more: each of them as often as all the others together
CONFIG_PATHS = [("config", k) for k in ("n_layer", "n_embd", "n_head", "vocab_size", "n_positions", "n_inner")]
# values of other types, and numbers at the edges
SWAPS = st.one_of(
    st.sampled_from(["abc", "128px", "", "1e3", "0", [], [1], {}, {"a": 1}, None, True, False, 0, -1, 1, 2**63,
                     10**400, 1e308, -1e308, float("inf"), float("-inf"), float("nan"), 0.5, "layers.x.q"]),
    st.integers(), st.floats(), st.text(max_size=6),
)


@st.composite
def mutated_docs(draw):
    doc = json.loads(json.dumps(DOC))
    for _ in range(draw(st.integers(1, 3))):
        path = draw(st.sampled_from(PATHS) | st.sampled_from(CONFIG_PATHS))
        *head, last = path
        parent = doc
        try:
            for k in head:
                parent = parent[k]
            parent[last]  # noqa: B018 (the path still exists after earlier mutations)
        except (KeyError, IndexError, TypeError):
            continue
        op = draw(st.sampled_from(["delete", "swap", "swap", "rename"]))
        if op == "delete":
            del parent[last]
        elif op == "swap":
            parent[last] = draw(SWAPS)
        elif isinstance(parent, dict):  # rename: a layer index that is not an integer, or any key
            new = draw(st.sampled_from(["x", "-1", "1.5", "", "01", "layers.x.q", "layers.-1.q", "layers.1"])
                       | st.text(max_size=5))
            parent[new] = parent.pop(last)
    return doc


def _write(tmp_path, doc):
    folder = tmp_path / f"r{next(_COUNTER)}"  # a new folder each time: no report cache can answer for it
    folder.mkdir()
    (folder / "steady_state.json").write_text(json.dumps(doc))
    return folder


def _one_line(exc):
    assert "\n" not in str(exc) and len(str(exc)) < 2000, str(exc)[:300]


@pytest.fixture(scope="module")
def bundled_model():
    with torch.device("meta"):  # shapes only
        return hv.from_report(BUNDLED)


@settings(max_examples=1000, **FUZZ)
@given(mutated_docs())
def test_mutated_steady_state_loads_or_raises_report_error(tmp_path, doc):
    folder = _write(tmp_path, doc)
    try:
        report = hv.VarianceReport.load(folder)
        variances = report.variances()
    except ReportError as exc:
        _one_line(exc)
        return
    assert all(v > 0 and math.isfinite(v) for v in variances.values())


@settings(max_examples=150, **FUZZ)
@given(mutated_docs())
def test_mutated_steady_state_plans_the_model_or_raises_the_library_error(tmp_path, bundled_model, doc):
    folder = _write(tmp_path, doc)
    try:
        rows = hv.init_plan(bundled_model, f"optimal:report={folder}")
    except HFVarInitError as exc:
        _one_line(exc)
        return
    assert all(r.std is None or 0 < r.std < math.inf for r in rows)


def _mutate(path, value):
    doc = json.loads(json.dumps(DOC))
    *head, last = path
    parent = doc
    for k in head:
        parent = parent[k]
    parent[last] = value
    return doc


@pytest.mark.parametrize("path, value, message", [
    # was: ValueError / OverflowError / TypeError at int(...) in the architecture check, or silently ignored
    (("config", "n_embd"), "abc", "n_embd='abc'"),
    (("config", "n_embd"), "128px", "n_embd='128px'"),
    (("config", "n_embd"), float("inf"), "n_embd=inf"),
    (("config", "n_embd"), [128], "n_embd=[128]"),
    (("config", "n_embd"), 0, "n_embd=0"),  # was: ZeroDivisionError building the report's model
    (("config", "n_head"), [4], "n_head=[4]"),  # was: TypeError '<' not supported between 'str' and 'int'
    (("config", "n_head"), 0, "n_head=0"),  # was: ZeroDivisionError
    (("config", "n_layer"), "12", "n_layer='12'"),
    # was: the fuzzer's input 99 built 561,290 blocks on the meta device (growing past 12 GB) to check shapes
    (("config", "n_layer"), 561290, "config (its layer count) is 561290; expected 12, the report's n_layer"),
    (("n_layer",), -1, "n_layer is -1"),
    (("tensors", "layers.0.q", "v_w"), "abc", "tensors['layers.0.q'].v_w is 'abc'; expected a number"),
    (("tensors", "layers.0.q", "window"), [1, "x"], "tensors['layers.0.q'].window"),
    (("tensors", "layers.0.q", "layer"), 3, "tensors['layers.0.q'].layer is 3"),
    (("tensors", "layers.0.q", "stationary"), "yes", "stationary is 'yes'"),
    (("layers", "x"), {"equilibration_step": 3}, "layers['x']"),
    (("layers", "0"), {"equilibration_step": "soon"}, "layers['0'].equilibration_step"),
    (("tensors", "layers.x.q"), {"v_w": 1e-3}, "tensors['layers.x.q']"),
    (("tensors",), [], "tensors is []"),
    (("datasets",), "user/ds", "datasets is 'user/ds'; expected a list of strings"),
    (("format_version",), 2, "format_version is 2"),
])
def test_steady_state_field_errors_name_the_field(tmp_path, bundled_model, path, value, message):
    folder = _write(tmp_path, _mutate(path, value))
    for load in (hv.VarianceReport.load, lambda f: hv.init_plan(bundled_model, f"optimal:report={f}")):
        with pytest.raises(ReportError) as info:
            load(folder)
        assert message in str(info.value) and "steady_state.json" in str(info.value)
        _one_line(info.value)


def test_the_schema_accepts_every_document_the_library_writes(tmp_path):
    validate_steady_state(DOC)
    report = hv.VarianceReport.load(BUNDLED)
    validate_steady_state(json.loads(json.dumps(report.to_steady_state())))
    with pytest.raises(ReportError, match="the document is"):
        validate_steady_state([DOC])


@pytest.mark.slow
def test_fuzzed_stored_configs_load_or_raise_the_library_error():
    """100 inputs of ``scripts/fuzz_report_configs.py`` (values inside a report's stored ``config`` mutated: lists,
    huge numbers, nested objects, wrong types): each is accepted or raises a one-line `HFVarInitError`."""
    import os
    import subprocess
    import sys
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    proc = subprocess.run([sys.executable, str(root / "scripts" / "fuzz_report_configs.py"), "--inputs", "100",
                           "--seed", "0"], capture_output=True, text=True, timeout=600, cwd=root,
                          env={**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"})
    summary = json.loads(proc.stdout.strip().splitlines()[-1])
    assert proc.returncode == 0 and summary["failures"] == 0, proc.stdout[-3000:]
    assert summary["inputs"] == 100 and sum(summary["outcomes"].values()) == 100
