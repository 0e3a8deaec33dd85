"""Specification of ``variance.safetensors``: writing, reading, joining, and refusing bad files."""

from __future__ import annotations

import json
import os
import pickle
import tempfile
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from safetensors import safe_open
from safetensors.numpy import save_file

from hf_varinit.errors import StatsError
from hf_varinit.io_utils import atomic_path, atomic_write_json, atomic_write_text
from hf_varinit.record.stats_file import STATS_FILENAME, VarianceStats, concat, load_stats, save_stats

METADATA = {
    "model_type": "gpt2", "config": {"n_layer": 2, "n_embd": 32}, "rule": "normal:std=0.02", "n_layer": 2,
    "seed": 0, "optimizer": "adamw", "lr": 1e-3, "versions": {"torch": "2.13"}, "source": "training",
    "dataset": "stdlib",
}


def tracked(n_layer: int = 2) -> list[dict]:
    rows = [{"key": "embedding", "name": "transformer.wte.weight", "role": "embedding", "layer": None,
             "slice": None, "fan_in": 50, "fan_out": 32, "init_std": 0.02, "numel": 1600}]
    for i in range(n_layer):
        for j, role in enumerate("qkv"):
            rows.append({"key": f"layers.{i}.{role}", "name": f"transformer.h.{i}.attn.c_attn.weight",
                         "role": role, "layer": i, "slice": f"[:, {32 * j}:{32 * (j + 1)}]", "fan_in": 32,
                         "fan_out": 32, "init_std": 0.02, "numel": 1024})
    return rows


def arrays(steps, n_tracked: int, seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    shape = (len(steps), n_tracked)
    mean = rng.normal(0, 1e-3, shape)
    var = rng.uniform(1e-4, 1e-2, shape)
    return {"step": np.asarray(steps), "mean": mean, "var": var, "second_moment": var + mean**2}


def write(path, steps=range(0, 100, 10), seed: int = 0, metadata=None) -> Path:
    t = tracked()
    return save_stats(path, **arrays(list(steps), len(t), seed), tracked=t, metadata=metadata or METADATA)


def test_round_trip_keeps_values_steps_and_metadata(tmp_path):
    t = tracked()
    data = arrays(list(range(0, 100, 10)), len(t))
    path = save_stats(tmp_path / "v.safetensors", **data, tracked=t, metadata=METADATA)
    stats = load_stats(path)
    assert stats.step.dtype == np.int64 and stats.step.tolist() == list(range(0, 100, 10))
    for name in ("mean", "var", "second_moment"):
        assert getattr(stats, name).dtype == np.float32
        np.testing.assert_allclose(getattr(stats, name), data[name].astype(np.float32))
    assert stats.tracked == t
    assert {k: stats.metadata[k] for k in METADATA} == METADATA
    assert stats.metadata["format"] == "hf_varinit.variance"


def test_file_is_readable_with_plain_safe_open(tmp_path):
    path = write(tmp_path)
    with safe_open(str(path), framework="np") as f:
        meta = f.metadata()
        assert set(f.keys()) == {"step", "mean", "var", "second_moment"}
        assert f.get_tensor("mean").shape == (10, 7)
    assert meta["format"] == "hf_varinit.variance" and meta["format_version"] == "1"
    assert json.loads(meta["tracked"])[1]["key"] == "layers.0.q"
    assert json.loads(meta["config"]) == METADATA["config"]
    assert json.loads(meta["lr"]) == 1e-3
    assert meta["rule"] == "normal:std=0.02"  # plain strings stay readable


def test_string_that_looks_like_json_round_trips_as_string(tmp_path):
    stats = load_stats(write(tmp_path, metadata={**METADATA, "seed_label": "123"}))
    assert stats.metadata["seed_label"] == "123"


def test_directory_path_gets_variance_safetensors_inside(tmp_path):
    path = write(tmp_path)
    assert path == tmp_path / STATS_FILENAME
    assert load_stats(tmp_path).path == path


def test_helpers_look_up_keys_layers_and_roles(tmp_path):
    stats = load_stats(write(tmp_path))
    assert stats.keys[0] == "embedding" and stats.index("layers.1.k") == 5
    assert stats.layers() == [0, 1]
    assert stats.keys_for_role("q") == ["layers.0.q", "layers.1.q"]
    np.testing.assert_array_equal(stats.series("layers.1.k", "var"), stats.var[:, 5])
    assert stats.model_type == "gpt2" and stats.n_layer == 2 and stats.rule == "normal:std=0.02"
    assert stats.config == {"n_layer": 2, "n_embd": 32}
    assert stats.to_dict()["var"]["layers.1.k"] == stats.var[:, 5].tolist()


def test_unknown_key_names_the_known_keys(tmp_path):
    stats = load_stats(write(tmp_path))
    with pytest.raises(StatsError, match="layers.0.q"):
        stats.index("layers.9.q")


@pytest.mark.parametrize(
    "change, message",
    [
        (lambda d, t: d.update(step=np.array([0, 10, 10, 30])), "strictly increasing"),
        (lambda d, t: d.update(var=d["var"][:, :-1]), "shape"),
        (lambda d, t: t.append({"key": "extra"}), "shape"),
        (lambda d, t: t.__setitem__(1, {**t[1], "key": "embedding"}), "unique"),
        (lambda d, t: t.__setitem__(0, {"role": "q"}), "key"),
    ],
    ids=["steps", "var-shape", "tracked-length", "duplicate-key", "no-key"],
)
def test_save_validates_inputs(tmp_path, change, message):
    t = tracked(1)
    data = arrays([0, 10, 20, 30], len(t))
    change(data, t)
    with pytest.raises(StatsError, match=message):
        save_stats(tmp_path, **data, tracked=t, metadata=METADATA)
    assert not (tmp_path / STATS_FILENAME).exists()


def test_concat_joins_records_along_steps(tmp_path):
    a = load_stats(write(tmp_path / "a", steps=range(0, 50, 10), seed=1))
    b = load_stats(write(tmp_path / "b", steps=range(50, 100, 10), seed=2))
    joined = a.append(b)
    assert joined.step.tolist() == list(range(0, 100, 10))
    np.testing.assert_array_equal(joined.var[5:], b.var)


def test_concat_refuses_overlapping_steps(tmp_path):
    a = load_stats(write(tmp_path / "a", steps=range(0, 50, 10)))
    b = load_stats(write(tmp_path / "b", steps=range(40, 100, 10)))
    with pytest.raises(StatsError, match="overlap"):
        concat(a, b)


def test_concat_refuses_different_keys(tmp_path):
    a = load_stats(write(tmp_path / "a", steps=range(0, 50, 10)))
    t = tracked(1)
    b = VarianceStats(**arrays([60, 70], len(t)), tracked=t)
    with pytest.raises(StatsError, match="different tracked keys"):
        concat(a, b)


def test_slice_steps_keeps_records_up_to_and_including_max_step(tmp_path):
    stats = load_stats(write(tmp_path))
    cut = stats.slice_steps(40)
    assert cut.step.tolist() == [0, 10, 20, 30, 40]
    np.testing.assert_array_equal(cut.second_moment, stats.second_moment[:5])


# --- refusing bad files ----------------------------------------------------------------------------


def test_missing_file_raises_stats_error(tmp_path):
    with pytest.raises(StatsError, match="not found"):
        load_stats(tmp_path / "nope.safetensors")


def test_folder_without_stats_file_raises_stats_error(tmp_path):
    with pytest.raises(StatsError, match="not found"):
        load_stats(tmp_path)


class _Payload:
    """Unpickling this would create ``sentinel``: the loader must never do it."""

    def __init__(self, sentinel: Path):
        self.sentinel = sentinel

    def __reduce__(self):
        return (Path.write_text, (self.sentinel, "unpickled!"))


def test_pickle_file_is_refused_and_never_unpickled(tmp_path):
    sentinel = tmp_path / "sentinel.txt"
    bad = tmp_path / "x.safetensors"
    with bad.open("wb") as fh:
        pickle.dump({"step": _Payload(sentinel)}, fh)
    with pytest.raises(StatsError, match="not a valid safetensors file"):
        load_stats(bad)
    assert not sentinel.exists()


def test_truncated_file_raises_stats_error(tmp_path):
    path = write(tmp_path)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(StatsError, match=str(path.name)):
        load_stats(path)


def test_file_cut_inside_the_tensor_data_raises_stats_error(tmp_path):
    path = write(tmp_path)
    path.write_bytes(path.read_bytes()[:-8])
    with pytest.raises(StatsError, match="corrupt or truncated"):
        load_stats(path)


def test_random_bytes_raise_stats_error(tmp_path):
    path = tmp_path / STATS_FILENAME
    path.write_bytes(np.random.default_rng(0).bytes(4096))
    with pytest.raises(StatsError):
        load_stats(path)


def test_wrong_format_field_raises_stats_error(tmp_path):
    path = tmp_path / "model.safetensors"
    save_file({"weight": np.zeros((2, 2), np.float32)}, str(path), metadata={"format": "pt"})
    with pytest.raises(StatsError, match="wrong format 'pt'"):
        load_stats(path)


def test_newer_format_version_raises_stats_error(tmp_path):
    path = write(tmp_path)
    with safe_open(str(path), framework="np") as f:
        meta, tensors = f.metadata(), {k: f.get_tensor(k) for k in f.keys()}
    save_file(tensors, str(path), metadata={**meta, "format_version": "2"})
    with pytest.raises(StatsError, match="unsupported format_version '2'"):
        load_stats(path)


def test_missing_tensor_raises_stats_error(tmp_path):
    path = write(tmp_path)
    with safe_open(str(path), framework="np") as f:
        meta, tensors = f.metadata(), {k: f.get_tensor(k) for k in f.keys() if k != "var"}
    save_file(tensors, str(path), metadata=meta)
    with pytest.raises(StatsError, match="missing tensor"):
        load_stats(path)


@pytest.mark.parametrize(
    "tensor, value, message",
    [("step", np.array([0, 20, 10, 30, 40, 50, 60, 70, 80, 90]), "strictly increasing"),
     ("var", np.zeros((10, 3), np.float32), "shape")],
    ids=["steps", "shape"],
)
def test_inconsistent_tensors_in_the_file_raise_stats_error(tmp_path, tensor, value, message):
    path = write(tmp_path)
    with safe_open(str(path), framework="np") as f:
        meta, tensors = f.metadata(), {k: f.get_tensor(k) for k in f.keys()}
    save_file({**tensors, tensor: value}, str(path), metadata=meta)
    with pytest.raises(StatsError, match=message):
        load_stats(path)


def test_tracked_not_a_list_of_dicts_raises_stats_error(tmp_path):
    path = write(tmp_path)
    with safe_open(str(path), framework="np") as f:
        meta, tensors = f.metadata(), {k: f.get_tensor(k) for k in f.keys()}
    save_file(tensors, str(path), metadata={**meta, "tracked": json.dumps(["layers.0.q"])})
    with pytest.raises(StatsError, match="list of dicts"):
        load_stats(path)


def _valid_bytes() -> bytes:
    with tempfile.TemporaryDirectory() as d:
        return write(Path(d), steps=[0, 10, 20]).read_bytes()


_VALID = _valid_bytes()


@st.composite
def _mutated_valid_file(draw) -> bytes:
    data = bytearray(_VALID)
    for _ in range(draw(st.integers(1, 8))):
        data[draw(st.integers(0, len(data) - 1))] = draw(st.integers(0, 255))
    return bytes(data[: draw(st.integers(0, len(data)))])


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.one_of(st.binary(max_size=2048), _mutated_valid_file()))
def test_fuzz_arbitrary_bytes_load_or_raise_stats_error(data):
    with tempfile.TemporaryDirectory() as d:
        path = Path(d) / STATS_FILENAME
        path.write_bytes(data)
        try:
            stats = load_stats(path)
        except StatsError:
            return
        assert len(stats.step) == stats.var.shape[0]


# --- atomic writes -----------------------------------------------------------------------------------


def test_atomic_write_leaves_old_file_and_no_temp_on_error(tmp_path):
    target = tmp_path / "out.json"
    atomic_write_json(target, {"a": 1})
    with pytest.raises(RuntimeError), atomic_path(target) as tmp:
        tmp.write_text("half")
        raise RuntimeError("writer failed")
    assert json.loads(target.read_text()) == {"a": 1}
    assert os.listdir(tmp_path) == ["out.json"]


def test_atomic_write_text_replaces_content(tmp_path):
    target = atomic_write_text(tmp_path / "a" / "b.txt", "one")
    atomic_write_text(target, "two")
    assert target.read_text() == "two" and os.listdir(target.parent) == ["b.txt"]
