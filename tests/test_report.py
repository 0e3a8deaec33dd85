"""Specification of the steady-state analysis and of the variance report folder."""

from __future__ import annotations

import json
import math
import os
import tempfile
import time
from pathlib import Path

import numpy as np
import pytest
import yaml
from huggingface_hub import ModelCard
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from hf_varinit.cli.main import main as cli_main
from hf_varinit.cli.report import main_report
from hf_varinit.errors import ReportError
from hf_varinit.record.stats_file import VarianceStats, load_stats, save_stats
from hf_varinit.report.options import AnalysisOptions
from hf_varinit.report.report import VarianceReport
from hf_varinit.report.steady_state import analyze, analyze_series

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
STEPS = np.arange(0, 1001, 10)  # one record every 10 steps
PLATEAU, START, REACHED = 4e-3, 1e-3, 300


def rising_then_flat(steps: np.ndarray, rng: np.random.Generator, plateau: float = PLATEAU) -> np.ndarray:
    """Exponential rise from START to ``plateau`` at step REACHED, then flat; 0.5% noise."""
    clean = np.where(steps < REACHED, START * (plateau / START) ** (steps / REACHED), plateau)
    return clean * (1 + 0.005 * rng.standard_normal(len(steps)))


def gpt2_stats(n_layer: int = 2, seed: int = 0, steps: np.ndarray = STEPS, **metadata) -> VarianceStats:
    rng = np.random.default_rng(seed)
    tracked, cols = [], []
    for i in range(n_layer):
        for role in "qkv":
            tracked.append({"key": f"layers.{i}.{role}", "name": f"transformer.h.{i}.attn.c_attn.weight",
                            "role": role, "layer": i, "slice": None, "fan_in": 32, "fan_out": 32,
                            "init_std": math.sqrt(START), "numel": 1024})
            cols.append(rising_then_flat(steps, rng, PLATEAU * (i + 1)))
    var = np.stack(cols, axis=1)
    meta = {"model_type": "gpt2", "config": {"model_type": "gpt2", "n_layer": n_layer, "n_embd": 32},
            "rule": "normal:std=0.0316", "n_layer": n_layer, "optimizer": "sgd", "lr": 0.1, "seed": seed,
            "source": "training", **metadata}
    return VarianceStats(step=steps, mean=np.zeros_like(var), var=var, second_moment=var, tracked=tracked,
                         metadata=meta)


def single(values: np.ndarray, steps: np.ndarray | None = None, **info) -> VarianceStats:
    steps = np.arange(len(values)) * 10 if steps is None else steps
    v = np.asarray(values, dtype=np.float64)[:, None]
    return VarianceStats(step=steps, mean=np.zeros_like(v), var=v, second_moment=v,
                         tracked=[{"key": "layers.0.q", "role": "q", "layer": 0, **info}])


# --- analysis -------------------------------------------------------------------------------------


def test_plateau_is_stationary_with_v_w_near_the_plateau():
    a = analyze(single(rising_then_flat(STEPS, np.random.default_rng(1)), STEPS))["layers.0.q"]
    assert a.stationary and a.reason is None
    assert abs(a.v_w - PLATEAU) / PLATEAU < 0.02
    assert a.window == (750, 1000) and a.spread < 0.02 and a.drift < 0.05


def test_equilibration_step_is_within_one_record_of_the_true_value():
    a = analyze(single(rising_then_flat(STEPS, np.random.default_rng(2)), STEPS))["layers.0.q"]
    # first step at which the clean curve enters the ±10% band around the plateau
    true_step = REACHED * math.log(0.9 * PLATEAU / START) / math.log(PLATEAU / START)
    assert abs(a.equilibration_step - true_step) <= 10


def test_linear_drift_is_not_stationary_and_reports_the_drift():
    a = analyze(single(1e-3 + 1e-5 * STEPS, STEPS))["layers.0.q"]
    assert not a.stationary and "drift" in a.reason
    expected = 1e-5 * 250 / (1e-3 + 1e-5 * 875)  # slope * window length / window mean
    assert a.drift == pytest.approx(expected, rel=1e-3)
    assert a.v_w == pytest.approx(1e-3 + 1e-5 * 1000, rel=1e-6)  # the last value, not an average
    assert a.equilibration_step is None


def test_too_few_records_are_not_stationary():
    a = analyze(single([1e-3, 1e-3, 1e-3]))["layers.0.q"]
    assert not a.stationary and "too few records" in a.reason and a.v_w == pytest.approx(1e-3)


def test_non_finite_values_are_not_stationary():
    values = np.full(20, 1e-3)
    values[-1] = np.nan
    a = analyze(single(values))["layers.0.q"]
    assert not a.stationary and "non-finite" in a.reason


def test_ratio_uses_init_std_when_known_else_first_record():
    values = np.full(20, 4e-3)
    assert analyze(single(values, init_std=0.02))["layers.0.q"].ratio == pytest.approx(10.0, rel=1e-5)
    assert analyze(single(values))["layers.0.q"].ratio == pytest.approx(1.0)


def test_layer_equilibration_is_the_latest_of_its_tensors():
    stats = gpt2_stats()
    stats.var[stats.step < 400, 1] = stats.var[-1, 1] * 0.5  # layer 0 K settles only at step 400
    stats.second_moment[:] = stats.var
    report = VarianceReport.from_stats(stats)
    assert report.tensors["layers.0.k"].equilibration_step == 400
    assert report.layers[0] == 400


def test_options_are_validated():
    with pytest.raises(ReportError, match="window_fraction"):
        AnalysisOptions(window_fraction=0)
    with pytest.raises(ReportError, match="stat"):
        AnalysisOptions(stat="median")


def test_wider_drift_tolerance_accepts_a_slow_drift():
    values = 1e-3 + 2e-7 * STEPS  # 2e-7 * 250 / 1.175e-3 = 4.3% drift across the window
    assert analyze_series(STEPS, values, options=AnalysisOptions(drift_tol=0.05))["stationary"]
    assert not analyze_series(STEPS, values, options=AnalysisOptions(drift_tol=0.01))["stationary"]


# --- the report ------------------------------------------------------------------------------------


LOCAL_CORPUS = "python-stdlib (3.11.7, 276 files)"  # how the training loop describes the offline corpus


@pytest.fixture
def report_dir(tmp_path) -> Path:
    stats = gpt2_stats(dataset=LOCAL_CORPUS)
    path = save_stats(tmp_path / "run", step=stats.step, mean=stats.mean, var=stats.var,
                      second_moment=stats.second_moment, tracked=stats.tracked, metadata=stats.metadata)
    return VarianceReport.from_stats(path).save(tmp_path / "report")


def _front_matter(text: str) -> dict:
    assert text.startswith("---\n")
    return yaml.safe_load(text.split("---\n", 2)[1])


def test_card_yaml_parses_with_library_name_and_tags(report_dir):
    meta = _front_matter((report_dir / "README.md").read_text())
    assert meta["library_name"] == "hf_varinit"
    assert {"hf-varinit", "weight-initialization", "variance-report", "gpt2"} <= set(meta["tags"])
    assert meta["n_layer"] == 2 and meta["model_type"] == "gpt2" and meta["init_rule"] == "normal:std=0.0316"


def test_card_metadata_is_what_the_hub_understands(report_dir):
    card = ModelCard.load(report_dir / "README.md")
    assert card.data.license == "apache-2.0"
    assert card.data.datasets is None  # a local corpus is not a hub dataset id...
    assert LOCAL_CORPUS in card.text  # ...it is described in the text
    assert card.data.base_model is None
    assert "hf_varinit_config" not in card.data.to_dict() and "n_embd" not in card.content.split("---")[1]
    assert json.loads((report_dir / "config.json").read_text()) == {"model_type": "gpt2", "n_layer": 2, "n_embd": 32}


def test_card_datasets_lists_a_hub_dataset_by_its_id(tmp_path):
    stats = gpt2_stats(dataset="hub:Salesforce/wikitext:wikitext-2-raw-v1", license="mit")
    folder = VarianceReport.from_stats(stats).save(tmp_path / "r")
    card = ModelCard.load(folder / "README.md")
    assert card.data.datasets == ["Salesforce/wikitext"] and card.data.license == "mit"
    reloaded = VarianceReport.load(folder)
    assert reloaded.datasets == ["Salesforce/wikitext"] and reloaded.license == "mit"


def test_explicit_datasets_must_be_hub_ids():
    with pytest.raises(ReportError, match="'my local corpus' is not a hub dataset id"):
        VarianceReport.from_stats(gpt2_stats(), datasets=["my local corpus"])


def test_card_loads_with_model_card_and_has_the_sections(report_dir):
    card = ModelCard.load(report_dir / "README.md")
    assert card.data.library_name == "hf_varinit"
    for text in ("## How the run was made", "| layer | V(W) Q | V(W) K | V(W) V |",
                 f'optimal:report={report_dir}', "hf-varinit pretrain --init", "## Caveats"):
        assert text in card.text


def test_steady_state_json_round_trips_through_load(report_dir):
    doc = json.loads((report_dir / "steady_state.json").read_text())
    assert doc["format"] == "hf_varinit.steady_state" and doc["format_version"] == 1
    loaded = VarianceReport.load(report_dir / "steady_state.json")
    original = VarianceReport.from_stats(report_dir / "variance.safetensors")
    assert loaded.variances() == pytest.approx(original.variances())
    assert loaded.model_type == "gpt2" and loaded.n_layer == 2 and loaded.config["n_embd"] == 32
    assert loaded.tensors["layers.1.v"] == original.tensors["layers.1.v"]
    assert loaded.layers == original.layers


def test_report_folder_holds_the_stats_and_three_pngs(report_dir):
    assert load_stats(report_dir).keys == gpt2_stats().keys
    for name in ("qkv_variance.png", "equilibration.png", "steady_state_vs_depth.png"):
        assert (report_dir / name).read_bytes()[:8] == PNG_MAGIC


def test_plots_work_without_qkv_roles(tmp_path):
    stats = gpt2_stats()
    for j, t in enumerate(stats.tracked):
        t["role"], t["key"] = "linear", f"layers.{t['layer']}.linear{j % 3}"
    folder = VarianceReport.from_stats(stats).save(tmp_path / "mlp")
    assert (folder / "qkv_variance.png").read_bytes()[:8] == PNG_MAGIC
    assert "V(W) linear" in (folder / "README.md").read_text()


def test_qkv_table_equilibration_is_of_q_k_v_only(tmp_path):
    stats = gpt2_stats(n_layer=1)
    stats.tracked.append({"key": "layers.0.mlp_in", "role": "mlp_in", "layer": 0, "init_std": math.sqrt(START)})
    late = rising_then_flat(STEPS, np.random.default_rng(5))
    late[STEPS < 700] = PLATEAU * 0.5  # the MLP tensor settles only at step 700
    for name in ("var", "second_moment", "mean"):
        column = late if name != "mean" else np.zeros_like(late)
        setattr(stats, name, np.concatenate([getattr(stats, name), column[:, None]], axis=1))
    report = VarianceReport.from_stats(stats)
    assert report.layers[0] == 700  # the layer as a whole (steady_state.json "layers")
    qkv_step = max(report.tensors[f"layers.0.{r}"].equilibration_step for r in "qkv")
    assert qkv_step < 700
    table = report.to_markdown_table()
    assert "equilibration step (Q/K/V)" in table
    assert table.splitlines()[-1].endswith(f"| {qkv_step} |")


def test_nonstationary_tensors_are_named_in_the_card(tmp_path):
    stats = gpt2_stats()
    stats.second_moment[:, 0] = 1e-3 + 1e-5 * stats.step
    folder = VarianceReport.from_stats(stats).save(tmp_path / "r")
    assert "**Not stationary**" in (folder / "README.md").read_text()
    assert "`layers.0.q`" in (folder / "README.md").read_text()


def test_variances_nonstationary_modes():
    stats = gpt2_stats()
    stats.second_moment[:, 0] = 1e-3 + 1e-5 * stats.step
    report = VarianceReport.from_stats(stats)
    assert report.variances("last")["layers.0.q"] == pytest.approx(1e-3 + 1e-5 * 1000, rel=1e-6)
    assert "layers.0.q" not in report.variances("skip")
    with pytest.raises(ReportError, match="layers.0.q"):
        report.variances("error")


def _snapshot(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def test_save_refuses_an_existing_report_folder_and_writes_nothing(report_dir):
    (report_dir / "notes.txt").write_text("mine")
    before = _snapshot(report_dir)
    other = VarianceReport.from_stats(gpt2_stats(n_layer=3))
    with pytest.raises(ReportError, match=f"{report_dir} already exists; pass --overwrite"):
        other.save(report_dir)
    assert _snapshot(report_dir) == before
    assert sorted(os.listdir(report_dir.parent)) == ["report", "run"]  # no temp folder left next to it


def test_overwrite_replaces_the_folder_whole(report_dir):
    (report_dir / "notes.txt").write_text("mine")
    VarianceReport.from_stats(gpt2_stats(n_layer=3)).save(report_dir, overwrite=True)
    assert not (report_dir / "notes.txt").exists()
    assert VarianceReport.load(report_dir).n_layer == 3
    assert sorted(os.listdir(report_dir.parent)) == ["report", "run"]


def test_save_into_an_empty_existing_folder_needs_no_overwrite(tmp_path):
    (tmp_path / "r").mkdir()
    assert (VarianceReport.from_stats(gpt2_stats()).save(tmp_path / "r") / "README.md").exists()


def test_cli_report_needs_overwrite_for_an_existing_folder(tmp_path):
    run = gpt2_stats().save(tmp_path / "run")
    assert cli_main(["report", str(run), "--output", str(tmp_path / "out")]) == 0
    (tmp_path / "out" / "notes.txt").write_text("mine")
    before = _snapshot(tmp_path / "out")
    assert cli_main(["report", str(run), "--output", str(tmp_path / "out")]) == 1
    assert _snapshot(tmp_path / "out") == before
    assert cli_main(["report", str(run), "--output", str(tmp_path / "out"), "--overwrite"]) == 0
    assert not (tmp_path / "out" / "notes.txt").exists()


@pytest.mark.parametrize("umask, folder_mode, file_mode", [(0o022, 0o755, 0o644), (0o027, 0o750, 0o640)])
def test_report_folders_get_normal_permissions(tmp_path, umask, folder_mode, file_mode):
    previous = os.umask(umask)
    try:
        folder = VarianceReport.from_stats(gpt2_stats()).save(tmp_path / "r")
    finally:
        os.umask(previous)
    assert folder.stat().st_mode & 0o777 == folder_mode
    modes = {p.name: p.stat().st_mode & 0o777 for p in folder.iterdir()}
    assert "variance.safetensors" in modes and set(modes.values()) == {file_mode}, modes


def test_failed_save_leaves_no_folder_and_no_temp(tmp_path, monkeypatch):
    import hf_varinit.report.plots

    def boom(*args, **kwargs):
        raise RuntimeError("plotting failed")

    monkeypatch.setattr(hf_varinit.report.plots, "write_plots", boom)
    with pytest.raises(RuntimeError):
        VarianceReport.from_stats(gpt2_stats()).save(tmp_path / "report")
    assert os.listdir(tmp_path) == []


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), -1e-3, 0.0, None])
def test_invalid_v_w_in_steady_state_json_raises_report_error_naming_the_key(report_dir, bad):
    path = report_dir / "steady_state.json"
    doc = json.loads(path.read_text())
    doc["tensors"]["layers.1.k"]["v_w"] = bad
    path.write_text(json.dumps(doc))
    with pytest.raises(ReportError, match=r"layers\.1\.k.*V\(W\) = " + ("None" if bad is None else "")):
        VarianceReport.load(report_dir)


def test_malformed_json_raises_report_error(tmp_path):
    (tmp_path / "steady_state.json").write_text("{not json")
    with pytest.raises(ReportError, match="cannot read"):
        VarianceReport.load(tmp_path)


def test_pickle_file_is_never_loaded_as_a_report(tmp_path):
    path = tmp_path / "report.pkl"
    path.write_bytes(b"\x80\x04K\x01.")
    with pytest.raises(ReportError, match="never loaded"):
        VarianceReport.load(path)


def test_load_from_safetensors_analyses_it(report_dir):
    report = VarianceReport.load(report_dir / "variance.safetensors")
    assert set(report.variances()) == set(gpt2_stats().keys)


def test_hub_id_offline_raises_report_error(monkeypatch, tmp_path):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ReportError, match="not a local path and the hub is unreachable"):
        VarianceReport.load("someone/gpt2-variance")


def test_push_to_hub_offline_fails_fast(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    report = VarianceReport.from_stats(gpt2_stats())
    start = time.monotonic()
    with pytest.raises(ReportError, match="could not push to someone/r: offline"):
        report.push_to_hub("someone/r")
    assert time.monotonic() - start < 2


def test_save_and_push_offline_writes_the_folder_and_says_so(monkeypatch, tmp_path):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    report = VarianceReport.from_stats(gpt2_stats())
    with pytest.raises(ReportError, match=f"written to {tmp_path / 'r'}"):
        report.save_and_push(tmp_path / "r", "someone/r")
    assert "optimal:report=someone/r" in (tmp_path / "r" / "README.md").read_text()


@pytest.mark.parametrize("bad", ["someone/gpt2/variance", "someone/gpt2--variance", "someone/.hidden"])
def test_a_bad_repo_id_is_a_report_error_naming_it(bad, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ReportError, match=f"{bad!r}: no such file or folder, and not a hub repo id"):
        VarianceReport.load(bad)
    with pytest.raises(ReportError, match=f"could not push: {bad!r} is not a hub repo id"):
        VarianceReport.from_stats(gpt2_stats()).push_to_hub(bad)


def test_extra_sections_follow_the_caveats_in_the_card(tmp_path):
    folder = VarianceReport.from_stats(gpt2_stats()).save(tmp_path / "r", extra_sections=["## Calibration\n\ntext"])
    card = ModelCard.load(folder / "README.md")
    assert card.data.library_name == "hf_varinit"
    assert card.text.index("## Caveats") < card.text.index("## Calibration\n\ntext")


def test_main_report_writes_the_folder(tmp_path, capsys):
    stats = gpt2_stats()
    path = stats.save(tmp_path / "run")
    folder = main_report(path, tmp_path / "out")
    assert (folder / "steady_state.json").exists() and str(folder) in capsys.readouterr().out


_json = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=10),
    lambda kids: st.lists(kids, max_size=4) | st.dictionaries(st.text(max_size=10), kids, max_size=4),
    max_leaves=30,
)


@st.composite
def _report_like(draw) -> dict:
    """Documents close to a real steady_state.json, with arbitrary values in places."""
    tensors = draw(st.dictionaries(st.text(min_size=1, max_size=8),
                                   st.dictionaries(st.sampled_from(["v_w", "layer", "role", "stationary",
                                                                    "window", "band", "drift"]), _json),
                                   max_size=3))
    return {"format": "hf_varinit.steady_state", "format_version": 1, "tensors": tensors,
            "options": draw(st.one_of(st.just({}), _json)), "n_layer": draw(_json)}


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(doc=st.one_of(_json, _report_like()))
def test_fuzz_arbitrary_json_loads_or_raises_report_error(doc):
    with tempfile.TemporaryDirectory() as d:
        path = Path(d) / "steady_state.json"
        path.write_text(json.dumps(doc))
        try:
            report = VarianceReport.load(path)
        except ReportError:
            return
        assert all(v > 0 and math.isfinite(v) for v in report.variances().values())


def test_demo_refuses_an_existing_report_dir_before_training(tmp_path):
    (tmp_path / "cards" / "mine").mkdir(parents=True)
    (tmp_path / "cards" / "mine" / "README.md").write_text("committed evidence")
    argv = ["demo", "--output-dir", str(tmp_path / "run"), "--report-dir", str(tmp_path / "cards" / "mine")]
    start = time.monotonic()
    assert cli_main(argv) == 1
    assert time.monotonic() - start < 20 and not (tmp_path / "run").exists()  # refused up front: nothing trained
    assert (tmp_path / "cards" / "mine" / "README.md").read_text() == "committed evidence"
