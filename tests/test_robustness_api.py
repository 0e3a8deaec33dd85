"""The Python API on bad input: every failure is the library's own error (never a raw TypeError, AttributeError,
OSError...), with nothing half-written left behind, and no silently wrong result."""

import json
import math
import os
import struct

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn
from transformers import GPT2Config

import hf_varinit as hv
from hf_varinit.errors import ConfigError, HFVarInitError, ReportError, RoleError, RuleError, StatsError
from hf_varinit.init.patch import trunc_normal_
from hf_varinit.init.rules import truncated_std_factor

BUNDLED = "gpt2-12l-tiny-qkv-dynamics"


@pytest.fixture
def tiny_model(tiny_gpt2_config):
    return hv.from_config(tiny_gpt2_config, "kaiming", seed=0)


@pytest.fixture
def recorder(tiny_model):
    rec = hv.VarianceRecorder(tiny_model, every=1)
    for step in range(3):
        rec.record(step)
    return rec


def _hidden(folder):
    return sorted(p.name for p in folder.rglob(".*"))


# --- rules ------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("cutoff", [1e-300, 1e-8, 1e-3])
def test_tiny_trunc_normal_cutoff_plans_and_samples(cutoff, tiny_model):
    # was: ValueError 'math domain error' at plan time (1e-8, 1e-300), and a resampling loop that never ends
    factor = truncated_std_factor(cutoff)
    if cutoff < 1e-30:  # std 0.02 truncated there draws values that float32 rounds to 0: refused, naming both
        with pytest.raises(RuleError, match="cutoff=1e-300"):
            hv.get_rule(f"trunc_normal:cutoff={cutoff}")
        assert math.isclose(factor, cutoff / math.sqrt(3), rel_tol=1e-6)
        return
    assert factor > 0 and math.isclose(factor, cutoff / math.sqrt(3), rel_tol=1e-6)
    rows = hv.init_plan(tiny_model, f"trunc_normal:cutoff={cutoff}")
    assert all(r.std is None or r.std > 0 for r in rows)
    t = trunc_normal_(torch.empty(10_000), std=1.0, cutoff=0.5)
    assert t.abs().max() <= 0.5
    assert math.isclose(t.std().item(), truncated_std_factor(0.5), rel_tol=0.05)


def test_kaiming_huge_leaky_slope_is_a_rule_error():
    # was: OverflowError from torch.nn.init.calculate_gain at plan time
    with pytest.raises(RuleError, match="a=1e"):
        hv.get_rule("kaiming:nonlinearity=leaky_relu,a=1e308")


@pytest.mark.parametrize("rule", ["kaiming", "xavier", "lecun", "kaiming:mode=fan_out"])
def test_zero_fan_layer_is_not_a_division_by_zero(rule):
    # was: ZeroDivisionError for nn.Linear(0, 5) (a tensor with no elements)
    model = nn.Sequential(nn.Linear(0, 5), nn.Linear(5, 0), nn.Linear(4, 4))
    hv.apply_init(model, rule, seed=0)
    assert any(r.note.startswith("empty tensor") for r in hv.init_plan(model, rule))


# --- from_config / apply_init / init_plan ----------------------------------------------------------------------
@pytest.mark.parametrize("config", [None, {"model_type": "gpt2"}, "gpt2"])
def test_from_config_refuses_what_is_not_a_config(config):
    with pytest.raises(ConfigError, match="not a transformers config"):
        hv.from_config(config, "kaiming")


@pytest.mark.parametrize("seed", ["a", 1.5, True, 2**70])
def test_bad_seed_is_a_config_error(seed, tiny_gpt2_config):
    # was: ValueError from torch for "a" and 2**70, and 1.5 silently seeded as 1
    with pytest.raises(ConfigError, match="seed="):
        hv.from_config(tiny_gpt2_config, "kaiming", seed=seed)


@pytest.mark.parametrize("call", [hv.apply_init, hv.init_plan, lambda m, r: hv.VarianceRecorder(m)])
@pytest.mark.parametrize("model", [None, "gpt2", GPT2Config()])
def test_model_that_is_not_a_module_is_a_role_error(call, model):
    with pytest.raises(RoleError, match="not a torch nn.Module"):
        call(model, "kaiming")


# --- VarianceRecorder / VarianceCallback -----------------------------------------------------------------------
@pytest.mark.parametrize("every", [0, -1, 1.5, "2", None, True])
def test_bad_every_is_the_library_error(every, tiny_model):
    # was: a bare ValueError (not an HFVarInitError), and every=True accepted
    with pytest.raises(StatsError, match="every="):
        hv.VarianceRecorder(tiny_model, every=every)
    with pytest.raises(StatsError, match="every="):
        hv.VarianceCallback(every=every)


@pytest.mark.parametrize("step", [1.5, "3", None, True])
def test_non_integer_step_is_refused(step, tiny_model):
    # was: 1.5 silently recorded as step 1; None/"3" a TypeError/ValueError
    rec = hv.VarianceRecorder(tiny_model)
    with pytest.raises(StatsError, match="step="):
        rec.record(step)
    with pytest.raises(StatsError, match="step="):
        rec.maybe_record(step)
    assert rec.steps == []
    rec.record(np.int64(4))
    rec.record(torch.tensor(5))
    assert rec.steps == [4, 5]


def test_recorder_save_to_bad_destinations(recorder, tmp_path):
    afile = tmp_path / "afile"
    afile.write_text("x")
    for dest, match in [(afile, "cannot write"), (afile / "sub", "cannot write"), (None, "not a usable path"),
                        ("a" * 5000, "not a usable path")]:
        with pytest.raises(StatsError, match=match):
            recorder.save(dest)
    assert afile.read_text() == "x"
    assert _hidden(tmp_path) == []
    # a folder whose name ends in .safetensors is still a folder
    (tmp_path / "d.safetensors").mkdir()
    assert recorder.save(tmp_path / "d.safetensors").name == "variance.safetensors"


# --- load_stats -------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("path", [None, 3, b"x", "a" * 5000])
def test_load_stats_bad_path(path):
    with pytest.raises(StatsError):
        hv.load_stats(path)


def test_load_stats_deeply_nested_metadata(recorder, tmp_path):
    # was: RecursionError from json.loads of the 'tracked' field
    data = recorder.save(tmp_path).read_bytes()
    n = struct.unpack("<Q", data[:8])[0]
    header = json.loads(data[8:8 + n])
    header["__metadata__"]["tracked"] = "[" * 100_000 + "]" * 100_000
    header["__metadata__"]["other"] = "[" * 100_000 + "]" * 100_000
    raw = json.dumps(header).encode()
    raw += b" " * (-len(raw) % 8)
    bad = tmp_path / "deep.safetensors"
    bad.write_bytes(struct.pack("<Q", len(raw)) + raw + data[8 + n:])
    with pytest.raises(StatsError, match="not valid JSON"):
        hv.load_stats(bad)
    with pytest.raises(ReportError):
        hv.VarianceReport.load(bad)


@settings(max_examples=60, deadline=None)
@given(st.data())
def test_corrupted_stats_file_is_a_stats_error(tmp_path_factory, data):
    folder = tmp_path_factory.mktemp("fuzz")
    stats = hv.load_stats(hv.VarianceReport.load(BUNDLED).stats.path)
    raw = bytearray(stats.save(folder / "good.safetensors").read_bytes())
    cut = data.draw(st.integers(0, len(raw)))
    flips = data.draw(st.lists(st.integers(0, len(raw) - 1), max_size=4))
    for i in flips:
        raw[i] ^= 0xFF
    bad = folder / "bad.safetensors"
    bad.write_bytes(bytes(raw[:cut]))
    try:
        hv.load_stats(bad)
    except StatsError:
        pass


# --- VarianceReport ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("source", [None, 3, b"abc", ["a"], "a" * 5000])
def test_report_load_bad_source(source):
    with pytest.raises(ReportError):
        hv.VarianceReport.load(source)


def test_report_save_to_bad_destinations(tmp_path):
    report = hv.VarianceReport.load(BUNDLED)
    afile = tmp_path / "afile"
    afile.write_text("x")
    for dest, match in [(afile / "sub", "cannot write the report folder"), (None, "not a path"), (3, "not a path")]:
        with pytest.raises(ReportError, match=match):
            report.save(dest)
    for sections in [None, [1, 2]]:
        with pytest.raises(ReportError, match="extra_sections"):
            report.save(tmp_path / "r", extra_sections=sections)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["afile"]
    assert _hidden(tmp_path) == []
    report.save(tmp_path / "one", extra_sections="## Extra\n\ntext")
    assert "## Extra" in (tmp_path / "one" / "README.md").read_text()


def test_push_to_hub_non_string_repo_id():
    with pytest.raises(ReportError, match="not a hub repo id"):
        hv.VarianceReport.load(BUNDLED).push_to_hub(None)


def test_from_stats_options_and_datasets():
    stats = hv.VarianceReport.load(BUNDLED).stats
    # was: AttributeError for a dict of options, and a str of datasets split into its characters
    report = hv.VarianceReport.from_stats(stats, {"drift_tol": 0.1}, datasets="user/ds")
    assert report.options.drift_tol == 0.1 and report.datasets == ["user/ds"]
    with pytest.raises(ReportError, match="options="):
        hv.VarianceReport.from_stats(stats, options=[1])


# --- from_report ------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("overrides, error, match", [
    ({"model_type": "llama"}, ConfigError, "model_type cannot be overridden"),  # was: TypeError
    ({"n_layer": "x"}, ConfigError, "n_layer"),  # was: StrictDataclassFieldValidationError
    ({"n_layer": 0}, ConfigError, "n_layer=0 is invalid"),  # was: a model with no layers, silently
    ({"n_layer": -1}, ConfigError, "n_layer=-1 is invalid"),
    ({"n_head": 3}, ConfigError, "n_head"),  # was: ValueError from the model's constructor
])
def test_from_report_bad_overrides(overrides, error, match):
    with pytest.raises(error, match=match):
        hv.from_report(BUNDLED, **overrides)


@pytest.mark.parametrize("source", [None, 3, ["a"]])
def test_from_report_bad_source(source):
    with pytest.raises(ReportError, match="is not a report"):
        hv.from_report(source)


def test_report_with_badly_typed_config_is_a_library_error(tmp_path):
    doc = json.loads((hv.VarianceReport.load(BUNDLED).stats.path.parent / "steady_state.json").read_text())
    doc["config"] = {**doc["config"], "n_embd": "wide"}
    (tmp_path / "steady_state.json").write_text(json.dumps(doc))
    with pytest.raises(HFVarInitError, match="n_embd"):
        hv.from_report(tmp_path)


def test_errors_are_one_line():
    with pytest.raises(ConfigError) as info:
        hv.from_report(BUNDLED, n_layer="x")
    assert "\n" not in str(info.value)
    assert os.linesep not in str(info.value)


# --- config sizes, checkpoints, output paths (issue: every input works or gets the library's one-line error) ---
@pytest.mark.parametrize("model_type, options, field", [
    ("gpt2", {"n_embd": 0}, "n_embd=0"),  # was: ZeroDivisionError building the model
    ("bert", {"n_head": 0}, "n_head=0"),  # was: ZeroDivisionError in the config's own check
    ("qwen2", {"n_layer": -5}, "n_layer=-5"),  # was: StrictDataclassClassValidationError
    ("gpt2", {"n_embd": 10**20}, "n_embd=100000000000000000000"),  # was: TypeError from torch.empty
    ("gpt2", {"n_head": True}, "n_head=True"),
])
def test_build_config_refuses_sizes_that_are_not_positive_integers(model_type, options, field):
    from hf_varinit.arch.builder import build_config

    with pytest.raises(ConfigError, match=field) as info:
        build_config(model_type, **options)
    assert "\n" not in str(info.value)


@pytest.mark.parametrize("value", ["abc", "128px", float("inf"), [128], 0, -1, True])
def test_config_accessors_name_a_bad_field(value):
    from hf_varinit.arch.config import check_config_sizes, hidden_size

    with pytest.raises(ConfigError, match="n_embd="):
        hidden_size({"n_embd": value})
    with pytest.raises(ConfigError, match="n_embd="):
        check_config_sizes({"n_layer": 2, "n_embd": value})
    assert hidden_size({"n_embd": None, "hidden_size": 64}) == 64  # None: not set


@pytest.mark.parametrize("weights", [b"", b"\x00" * 7, os.urandom(1000), b"\x08\x00\x00\x00\x00\x00\x00\x00{}xx"])
def test_stats_from_a_corrupt_checkpoint_is_a_report_error(tmp_path, tiny_gpt2_config, weights):
    from hf_varinit.record.from_checkpoint import stats_from_checkpoint

    tiny_gpt2_config.save_pretrained(tmp_path)
    (tmp_path / "model.safetensors").write_bytes(weights)
    with pytest.raises(ReportError, match="model.safetensors") as info:
        stats_from_checkpoint(tmp_path)
    assert "\n" not in str(info.value)


def test_blocking_file_finds_the_file_in_the_way(tmp_path):
    from hf_varinit.io_utils import blocking_file

    (tmp_path / "afile").write_text("x")
    assert blocking_file(tmp_path / "afile" / "x" / "y") == tmp_path / "afile"
    assert blocking_file(tmp_path / "new" / "x") is None
    assert blocking_file(tmp_path / "afile") is None  # the path itself may be replaced; its parents must be folders
