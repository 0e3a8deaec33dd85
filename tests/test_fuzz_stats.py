"""Fuzzing ``variance.safetensors``: truncated and bit-flipped files, and files whose metadata is structurally
mutated (keys deleted, values of other types, non-integer layers), load and analyse, or raise the library's own
one-line error. And the README's example of writing the format by hand, run as written. Deterministic."""

import contextlib
import io
import json
import math
import struct

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import hf_varinit as hv
from hf_varinit.errors import HFVarInitError, StatsError
from hf_varinit.record.stats_file import FORMAT, FORMAT_VERSION, VarianceStats

FUZZ = dict(derandomize=True, deadline=None, database=None,
            suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])


def _small_stats() -> VarianceStats:
    """A real record cut to 6 steps and 6 tracked tensors (small enough that flips hit the header often)."""
    full = hv.load_stats(hv.VarianceReport.load("gpt2-12l-tiny-qkv-dynamics").stats.path)
    cols = [full.index(k) for k in full.keys[:6]]
    return VarianceStats(step=full.step[:6], mean=full.mean[:6, cols], var=full.var[:6, cols],
                         second_moment=full.second_moment[:6, cols], tracked=[full.tracked[c] for c in cols],
                         metadata=dict(full.metadata))


@pytest.fixture(scope="module")
def good_file(tmp_path_factory):
    return _small_stats().save(tmp_path_factory.mktemp("stats") / "good.safetensors")


def _one_line(exc):
    assert "\n" not in str(exc) and len(str(exc)) < 2000, str(exc)[:300]


def _load_and_analyse(path):
    """Loads and analyses, or raises the library's error; what loads has finite V(W) > 0 or is refused by report."""
    try:
        stats = hv.load_stats(path)
    except StatsError as exc:
        _one_line(exc)
        return
    try:
        hv.VarianceReport.from_stats(stats).variances()
    except HFVarInitError as exc:
        _one_line(exc)


@settings(max_examples=700, **FUZZ)
@given(st.data())
def test_truncated_and_flipped_stats_files_load_or_raise_stats_error(tmp_path, good_file, data):
    raw = bytearray(good_file.read_bytes())
    header_end = 8 + struct.unpack("<Q", raw[:8])[0]
    where = st.integers(0, header_end + 64) | st.integers(0, len(raw) - 1)  # mostly the header
    for i in data.draw(st.lists(where, max_size=4)):
        raw[i] = data.draw(st.sampled_from([0x00, 0xFF, ord("{"), ord('"'), ord("9"), raw[i] ^ 0x01]))
    cut = data.draw(st.sampled_from([len(raw)]) | st.integers(0, len(raw)))
    path = tmp_path / "bad.safetensors"
    path.write_bytes(bytes(raw[:cut]))
    _load_and_analyse(path)


def _rewrite(path, header):
    """``path``'s data with another JSON header (padded to 8 bytes, as safetensors writes it)."""
    data = path.read_bytes()
    body = data[8 + struct.unpack("<Q", data[:8])[0]:]
    raw = json.dumps(header).encode()
    raw += b" " * (-len(raw) % 8)
    return struct.pack("<Q", len(raw)) + raw + body


SWAPS = st.one_of(
    st.sampled_from(["abc", "128px", "", [], [1], {}, None, True, 0, -1, 2**63, 10**400, 1e308, float("inf"),
                     float("nan"), "layers.x.q", "[", "{}"]),
    st.integers(), st.floats(), st.text(max_size=5),
)


@st.composite
def mutated_metadata(draw, meta):
    """The decoded metadata with 1-3 of its fields (or of a tracked entry, or of the config) deleted or swapped."""
    decoded = {k: json.loads(v) if k in ("tracked", "config", "n_layer") else v for k, v in meta.items()}
    for _ in range(draw(st.integers(1, 3))):
        where = draw(st.sampled_from(["top", "tracked", "tracked", "config"]))
        if where == "top":
            parent = decoded
        elif where == "tracked" and isinstance(decoded.get("tracked"), list) and decoded["tracked"]:
            parent = decoded["tracked"][draw(st.integers(0, len(decoded["tracked"]) - 1))]
        elif where == "config" and isinstance(decoded.get("config"), dict):
            parent = decoded["config"]
        else:
            continue
        if not isinstance(parent, dict) or not parent:
            continue
        key = draw(st.sampled_from(sorted(parent)) | st.sampled_from(["n_embd", "n_head", "n_layer", "layer"]))
        if draw(st.booleans()) and key in parent:
            del parent[key]
        else:
            parent[key] = draw(SWAPS)
    return {k: v if isinstance(v, str) and k not in ("tracked", "config", "n_layer") else json.dumps(v)
            for k, v in decoded.items()}


@settings(max_examples=800, **FUZZ)
@given(st.data())
def test_stats_files_with_mutated_metadata_load_or_raise_the_library_error(tmp_path, good_file, data):
    raw = good_file.read_bytes()
    header = json.loads(raw[8:8 + struct.unpack("<Q", raw[:8])[0]])
    header["__metadata__"] = data.draw(mutated_metadata(header["__metadata__"]))
    path = tmp_path / "mutated.safetensors"
    path.write_bytes(_rewrite(good_file, header))
    _load_and_analyse(path)


@pytest.mark.parametrize("field, value, message", [
    ("config", {"n_embd": "abc"}, "n_embd='abc'"),
    ("config", {"n_head": [4]}, "n_head=[4]"),
    ("config", {"n_layer": 0}, "n_layer=0"),
    ("n_layer", "x", "n_layer is 'x'"),
    ("model_type", 3, "model_type is 3"),
])
def test_stats_metadata_errors_name_the_field(tmp_path, good_file, field, value, message):
    stats = hv.load_stats(good_file)
    meta = {**stats.metadata, field: value}
    path = VarianceStats(step=stats.step, mean=stats.mean, var=stats.var, second_moment=stats.second_moment,
                         tracked=stats.tracked, metadata=meta).save(tmp_path / "m.safetensors")
    with pytest.raises(StatsError, match="metadata") as info:
        hv.load_stats(path)
    assert message in str(info.value)


@pytest.mark.parametrize("index, entry, message", [
    (0, {"layer": "x"}, "tracked[0].layer is 'x'"),
    (1, {"fan_in": -3}, "tracked[1].fan_in is -3"),
    (2, {"key": "layers.x.q"}, "tracked[2].key"),
    (3, {"layer": 7}, "tracked[3].layer is 7"),
])
def test_tracked_entry_errors_name_the_entry(tmp_path, good_file, index, entry, message):
    raw = good_file.read_bytes()
    header = json.loads(raw[8:8 + struct.unpack("<Q", raw[:8])[0]])
    tracked = json.loads(header["__metadata__"]["tracked"])
    tracked[index].update(entry)
    header["__metadata__"]["tracked"] = json.dumps(tracked)
    path = tmp_path / "t.safetensors"
    path.write_bytes(_rewrite(good_file, header))
    with pytest.raises(StatsError, match="metadata") as info:
        hv.load_stats(path)
    assert message in str(info.value)


# The README's example (section "Files"), verbatim: the lead pastes the same text there.
README_EXAMPLE = '''\
import json

import numpy as np
from safetensors.numpy import save_file

import hf_varinit as hv

steps = np.array([0, 100, 200, 300], dtype=np.int64)  # [S] optimizer steps, strictly increasing
tracked = [  # one entry per column of the [S, T] tensors; "key" is required and unique
    {"key": "layers.0.q", "role": "q", "layer": 0},
    {"key": "layers.0.k", "role": "k", "layer": 0},
]
var = np.full((len(steps), len(tracked)), 4e-4, dtype=np.float32)  # [S, T] population variance
mean = np.zeros_like(var)  # [S, T] population mean
save_file(
    {"step": steps, "mean": mean, "var": var, "second_moment": var + mean**2},
    "my_variance.safetensors",
    metadata={  # str -> str: JSON-encode every value that is not a plain string
        "format": "hf_varinit.variance",  # required
        "format_version": "1",  # required
        "tracked": json.dumps(tracked),  # required
        "model_type": "gpt2",  # optional, like config, n_layer, rule, seed, lr...
        "n_layer": json.dumps(1),
    },
)
stats = hv.load_stats("my_variance.safetensors")
print(stats.keys, hv.VarianceReport.from_stats(stats).variances())
'''


def test_readme_example_writes_a_file_the_library_loads(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with contextlib.redirect_stdout(io.StringIO()) as out:
        exec(compile(README_EXAMPLE, "README example", "exec"), {})
    assert "layers.0.q" in out.getvalue()
    stats = hv.load_stats(tmp_path / "my_variance.safetensors")
    assert stats.keys == ["layers.0.q", "layers.0.k"] and stats.n_layer == 1 and stats.model_type == "gpt2"
    variances = hv.VarianceReport.from_stats(stats).variances()
    assert all(math.isclose(v, 4e-4, rel_tol=1e-6) for v in variances.values())
    np.testing.assert_array_equal(stats.step, [0, 100, 200, 300])


@pytest.mark.parametrize("missing", ["format", "format_version", "tracked"])
def test_each_required_key_of_the_readme_example_is_required(tmp_path, monkeypatch, missing):
    monkeypatch.chdir(tmp_path)
    code = README_EXAMPLE.replace(f'        "{missing}": ', '        "_dropped": ').split("stats = hv.load_stats")[0]
    exec(compile(code, "README example", "exec"), {})
    with pytest.raises(StatsError, match=missing):
        hv.load_stats(tmp_path / "my_variance.safetensors")
    assert (FORMAT, FORMAT_VERSION) == ("hf_varinit.variance", "1")  # the values the example writes
