"""A full disk or an I/O error while writing: one error naming the path and the cause, nothing half-written.

Faults are injected in-process: ``os.fsync`` / ``os.replace`` raise ``ENOSPC`` or ``EIO`` for one path (where a full
disk or a failing device shows first), or a serializer raises what the real one raises on a full disk (safetensors:
a ``SafetensorError`` "(os error 28)"; ``torch.save``: a ``RuntimeError`` "unexpected pos"). Each test checks that
the previous checkpoint and statistics are bit-identical, that no temporary file or staging folder is left, and that
``--resume`` (once the fault is gone) ends bit-identical to an uninterrupted run.
"""

from __future__ import annotations

import errno
import hashlib
import math
import os
import re
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors import SafetensorError

import hf_varinit.record.stats_file as stats_file
import hf_varinit.train.loop as loop
from hf_varinit.calibrate import calibrate
from hf_varinit.cli import main
from hf_varinit.cli.pretrain import parse_options
from hf_varinit.errors import WriteError, write_error
from hf_varinit.io_utils import atomic_write_text, commit_folder, staging_folder
from hf_varinit.record.stats_file import VarianceStats, load_stats
from hf_varinit.report.report import VarianceReport
from hf_varinit.train.checkpoint import complete_checkpoints
from hf_varinit.train.loop import run_pretrain

ROOT = Path(__file__).resolve().parents[1]
TEST_CONFIG = str(ROOT / "hf_varinit" / "configs" / "gpt2-tiny-test.yaml")
RUN = ["--max-steps", "8", "--checkpoint-every", "3", "--record-every", "1", "--log-every", "1", "--keep-last", "5",
       "--dropout", "0.1", "--eval-every", "none", "--disable-tqdm"]  # checkpoints at steps 3, 6 and 8
BUNDLED = "gpt2-12l-tiny-qkv-dynamics"
needs_proc = pytest.mark.skipif(not Path("/proc/self/fd").is_dir(), reason="maps fsync's file descriptor to its path")


@pytest.fixture(scope="module")
def cache_dir(tmp_path_factory) -> str:
    return str(tmp_path_factory.mktemp("tokenizer_cache"))


def pretrain(out: Path, cache_dir: str, *extra: str):
    return run_pretrain(parse_options(["--config", TEST_CONFIG, "--output-dir", str(out), "--cache-dir", cache_dir,
                                       *RUN, *extra]))


def cli_pretrain(out: Path, cache_dir: str, *extra: str) -> list[str]:
    return ["pretrain", "--config", TEST_CONFIG, "--output-dir", str(out), "--cache-dir", cache_dir, *RUN, *extra]


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory, cache_dir) -> Path:
    out = tmp_path_factory.mktemp("uninterrupted")
    pretrain(out, cache_dir)
    return out


def assert_same_run(a: Path, b: Path) -> None:
    """Final weights and statistics of two output folders are bit-identical."""
    from safetensors.torch import load_file

    wa, wb = load_file(a / "final" / "model.safetensors"), load_file(b / "final" / "model.safetensors")
    assert wa.keys() == wb.keys() and all(torch.equal(wa[k], wb[k]) for k in wa)
    sa, sb = load_stats(a / "variance.safetensors"), load_stats(b / "variance.safetensors")
    assert np.array_equal(sa.step, sb.step)
    for name in ("mean", "var", "second_moment"):
        assert np.array_equal(getattr(sa, name), getattr(sb, name)), name


def digest(*paths: Path) -> dict[str, str]:
    """sha256 of every file under ``paths`` (files or folders), by path."""
    files = [f for p in paths for f in ([p] if p.is_file() else sorted(p.rglob("*"))) if f.is_file()]
    return {str(f): hashlib.sha256(f.read_bytes()).hexdigest() for f in files}


def leftovers(folder: Path) -> list[str]:
    """Temporary files and staging folders: every hidden entry (``.tmp_step_N``, ``.name.xxxx.tmp``, ``.old``)."""
    return sorted(str(p.relative_to(folder)) for p in folder.rglob(".*"))


def fail_fsync(monkeypatch, code: int, where: str) -> list[str]:
    """``os.fsync`` raises ``OSError(code)`` once, for the first file whose path contains ``where``."""
    real, hit = os.fsync, []

    def fsync(fd):
        try:
            path = os.readlink(f"/proc/self/fd/{fd}")
        except OSError:
            path = ""
        if where in path and not hit:
            hit.append(path)
            raise OSError(code, os.strerror(code))
        return real(fd)

    monkeypatch.setattr(os, "fsync", fsync)
    return hit


def fail_replace(monkeypatch, code: int, suffix: str) -> list[str]:
    """``os.replace`` raises ``OSError(code)`` once, for the first destination ending in ``suffix``."""
    real, hit = os.replace, []

    def replace(src, dst, **kwargs):
        if str(dst).endswith(suffix) and not hit:
            hit.append(str(dst))
            raise OSError(code, os.strerror(code))
        return real(src, dst, **kwargs)

    monkeypatch.setattr(os, "replace", replace)
    return hit


def snapshot_before(monkeypatch, name: str, paths, step: int | None = None) -> dict:
    """Hash ``paths(output_dir)`` when ``loop.<name>`` (``save_checkpoint`` of ``step``, or ``save_outputs``) starts,
    before the fault can touch them."""
    real, seen = getattr(loop, name), {}

    def wrapper(accelerator, output_dir, *args):
        state = args[0] if name == "save_checkpoint" else None
        if step is None or state.step == step:
            seen.update(digest(*paths(output_dir)))
        return real(accelerator, output_dir, *args)

    monkeypatch.setattr(loop, name, wrapper)
    return seen


# ----------------------------------------------------------------------------- the messages


def test_a_write_error_names_the_path_the_cause_and_the_fix(tmp_path):
    full = write_error(tmp_path / "variance.safetensors", OSError(errno.ENOSPC, "No space left on device"))
    assert str(full).startswith(f"cannot write {tmp_path / 'variance.safetensors'}: No space left on device "
                                "[Errno 28: ENOSPC]; free space on that file system (")
    assert full.errno == errno.ENOSPC and "\n" not in str(full)
    rust = SafetensorError("Error while serializing: I/O error: Input/output error (os error 5)")
    eio = write_error(tmp_path / "final", rust, what="final/", then="continue with --resume")
    assert str(eio) == (f"cannot write final/ {tmp_path / 'final'}: Input/output error [Errno 5: EIO]; the storage "
                        "reported an I/O error: check the disk (dmesg, df) or write to another folder, then continue "
                        "with --resume")
    torch_save = RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 576 vs 534")
    assert "unexpected pos 576 vs 534; check that the folder is writable" in str(write_error(tmp_path, torch_save))


def test_a_failed_commit_puts_the_previous_folder_back(tmp_path, monkeypatch):
    dest = tmp_path / "final"
    dest.mkdir()
    (dest / "model.safetensors").write_bytes(b"old weights")
    tmp = staging_folder(dest)
    (tmp / "model.safetensors").write_bytes(b"new weights")
    fail_replace(monkeypatch, errno.EIO, f"{os.sep}final")
    with pytest.raises(WriteError, match=r"cannot write .*final: Input/output error \[Errno 5: EIO\]"):
        commit_folder(tmp, dest)
    assert (dest / "model.safetensors").read_bytes() == b"old weights"
    assert not list(tmp_path.glob("*.old"))


@needs_proc
def test_an_atomic_write_that_fails_at_fsync_leaves_the_old_file_and_no_temp(tmp_path, monkeypatch):
    target = tmp_path / "steady_state.json"
    target.write_text("old")
    fail_fsync(monkeypatch, errno.EIO, f"{os.sep}.steady_state.json.")
    with pytest.raises(WriteError, match=re.escape(f"cannot write {target}: Input/output error [Errno 5: EIO]")):
        atomic_write_text(target, "new")
    assert target.read_text() == "old" and leftovers(tmp_path) == []


# ----------------------------------------------------------------------------- the pretraining run


@pytest.mark.slow
@needs_proc
def test_a_full_disk_during_a_checkpoint_keeps_the_last_one_and_resume_ends_bit_identical(
        tmp_path, cache_dir, uninterrupted, monkeypatch):
    before = snapshot_before(monkeypatch, "save_checkpoint", lambda out: [out / "checkpoints" / "step_3",
                                                                          out / "variance.safetensors"], step=6)
    hit = fail_fsync(monkeypatch, errno.ENOSPC, f"{os.sep}.tmp_step_6{os.sep}")
    with pytest.raises(WriteError) as caught:
        pretrain(tmp_path, cache_dir)
    assert hit and caught.value.errno == errno.ENOSPC
    assert str(caught.value).startswith(
        f"cannot write the checkpoint {tmp_path / 'checkpoints' / 'step_6'} (writing ")
    assert ": No space left on device [Errno 28: ENOSPC]; free space on that file system" in str(caught.value)
    assert str(caught.value).endswith("then continue with --resume (from step_3, the newest complete checkpoint, "
                                      "left intact)")
    assert [step for step, _ in complete_checkpoints(tmp_path)] == [3]
    assert leftovers(tmp_path) == [] and not (tmp_path / "final").exists()
    assert before and digest(tmp_path / "checkpoints" / "step_3", tmp_path / "variance.safetensors") == before
    monkeypatch.undo()  # space is back
    resumed = pretrain(tmp_path, cache_dir, "--resume")
    assert resumed.resumed_from.name == "step_3"
    assert_same_run(tmp_path, uninterrupted)


@pytest.mark.slow
def test_an_io_error_in_torch_save_stops_the_command_with_one_line_and_resume_works(
        tmp_path, cache_dir, uninterrupted, monkeypatch, capsys):
    real_save = torch.save

    def save(obj, f, *args, **kwargs):  # what torch.save does on a full disk: a partial file, then this error
        if ".tmp_step_6" in str(f) and str(f).endswith("optimizer.bin"):
            Path(f).write_bytes(b"PK\x03\x04 partial")
            raise RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 576 vs 534")
        return real_save(obj, f, *args, **kwargs)

    monkeypatch.setattr(torch, "save", save)
    assert main(cli_pretrain(tmp_path, cache_dir)) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1, err
    assert err[0].startswith(f"hf-varinit pretrain: error: cannot write the checkpoint "
                             f"{tmp_path / 'checkpoints' / 'step_6'}: [enforce fail at inline_container.cc:672] . "
                             f"unexpected pos ")
    assert err[0].endswith("then continue with --resume (from step_3, the newest complete checkpoint, left intact)")
    assert [step for step, _ in complete_checkpoints(tmp_path)] == [3] and leftovers(tmp_path) == []
    monkeypatch.undo()
    assert main(cli_pretrain(tmp_path, cache_dir, "--resume")) == 0
    assert_same_run(tmp_path, uninterrupted)


@pytest.mark.slow
def test_an_io_error_writing_final_keeps_every_checkpoint_and_resume_writes_it(
        tmp_path, cache_dir, uninterrupted, monkeypatch):
    fail_replace(monkeypatch, errno.EIO, f"{os.sep}final")
    final = re.escape(str(tmp_path / "final"))
    with pytest.raises(WriteError, match=rf"^cannot write final/ {final}: Input/output error \[Errno 5: EIO\]; "
                                         r".*then continue with --resume \(from step_8"):
        pretrain(tmp_path, cache_dir)
    assert not (tmp_path / "final").exists() and leftovers(tmp_path) == []
    assert [step for step, _ in complete_checkpoints(tmp_path)] == [3, 6, 8]
    assert load_stats(tmp_path / "variance.safetensors").step.tolist() == list(range(9))  # written before final/
    monkeypatch.undo()
    assert pretrain(tmp_path, cache_dir, "--resume").resumed_from.name == "step_8"
    assert_same_run(tmp_path, uninterrupted)


@pytest.mark.slow
@pytest.mark.parametrize("when", ["checkpoint", "end"])
def test_a_full_disk_writing_the_statistics_keeps_the_previous_file_and_resume_ends_bit_identical(
        tmp_path, cache_dir, uninterrupted, monkeypatch, when):
    real_save_file = stats_file.save_file
    stats_only = lambda out: [out / "variance.safetensors"]  # noqa: E731
    if when == "checkpoint":  # the refresh of variance.safetensors after checkpoint step_6 is complete
        before = snapshot_before(monkeypatch, "save_checkpoint", stats_only, step=6)
        fails = lambda meta, n: n == 7 and "final_step" not in meta  # noqa: E731  (steps 0..6)
    else:  # the last write, before final/
        before = snapshot_before(monkeypatch, "save_outputs", stats_only)
        fails = lambda meta, n: "final_step" in meta  # noqa: E731

    def save_file(tensors, filename, metadata=None):  # safetensors on a full disk: its own error type, not OSError
        if Path(filename).parent == tmp_path and fails(metadata or {}, len(tensors["step"])):
            Path(filename).write_bytes(b"\x00" * 10)
            raise SafetensorError("Error while serializing: I/O error: No space left on device (os error 28)")
        return real_save_file(tensors, filename, metadata=metadata)

    monkeypatch.setattr(stats_file, "save_file", save_file)
    stats = re.escape(str(tmp_path / "variance.safetensors"))
    with pytest.raises(WriteError, match=rf"^cannot write the statistics file {stats}: "
                                         r"No space left on device \[Errno 28: ENOSPC\]"):
        pretrain(tmp_path, cache_dir)
    assert before and digest(tmp_path / "variance.safetensors") == before
    assert leftovers(tmp_path) == [] and not (tmp_path / "final").exists()
    newest = 6 if when == "checkpoint" else 8  # the checkpoint was complete before the statistics file was refreshed
    assert complete_checkpoints(tmp_path)[-1][0] == newest
    monkeypatch.undo()
    assert pretrain(tmp_path, cache_dir, "--resume").resumed_from.name == f"step_{newest}"
    assert_same_run(tmp_path, uninterrupted)


@pytest.mark.slow
def test_a_full_disk_met_outside_the_writers_is_still_one_write_error(tmp_path, cache_dir, uninterrupted,
                                                                      monkeypatch):
    from hf_varinit.train.metrics import MetricsFile

    real_log = MetricsFile.log

    def log(self, values, step=None, **kwargs):  # metrics.jsonl's append meets a full disk at step 5
        if step == 5:
            raise OSError(errno.ENOSPC, "No space left on device", str(self.path))
        return real_log(self, values, step=step, **kwargs)

    monkeypatch.setattr(MetricsFile, "log", log)
    metrics = re.escape(str(tmp_path / "metrics.jsonl"))
    with pytest.raises(WriteError, match=rf"^cannot write {metrics}: No space left on device \[Errno 28: ENOSPC\]"):
        pretrain(tmp_path, cache_dir)
    monkeypatch.undo()
    assert pretrain(tmp_path, cache_dir, "--resume").resumed_from.name == "step_3"
    assert_same_run(tmp_path, uninterrupted)


# ----------------------------------------------------------------------------- reports and calibrations


@needs_proc
def test_an_io_error_in_a_report_save_leaves_the_old_report_whole(tmp_path, monkeypatch):
    report = VarianceReport.load(BUNDLED)
    out = report.save(tmp_path / "report")
    before = digest(out)
    hit = fail_fsync(monkeypatch, errno.EIO, ".png")
    with pytest.raises(WriteError, match=rf"^cannot write the folder {re.escape(str(out))} \(writing .*\.png\): "
                                         r"Input/output error \[Errno 5: EIO\]; the storage reported an I/O error"):
        report.save(out, overwrite=True)
    assert hit and digest(out) == before and leftovers(tmp_path) == []


@needs_proc
def test_a_full_disk_in_the_report_command_is_one_line_and_no_folder(tmp_path, monkeypatch, capsys):
    stats = VarianceReport.load(BUNDLED).stats
    run = tmp_path / "run"
    stats_file.save_stats(run, step=stats.step, mean=stats.mean, var=stats.var, second_moment=stats.second_moment,
                          tracked=stats.tracked, metadata=stats.metadata)
    fail_fsync(monkeypatch, errno.ENOSPC, "README.md")
    assert main(["report", str(run), "--output", str(tmp_path / "report")]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith(f"hf-varinit report: error: cannot write the folder "
                                               f"{tmp_path / 'report'} (writing README.md): No space left on device "
                                               f"[Errno 28: ENOSPC]"), err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["run"] and leftovers(tmp_path) == []


def _toy_calibration():
    class Toy:
        def __init__(self, rule):
            self.s0_sq = 1.0 if rule == "kaiming" else rule["variances"]["w"]

    def pilot(model):
        steps = np.arange(0, 100, 10)
        sm = np.r_[model.s0_sq, np.full(len(steps) - 1, 0.2 + 0.5 * model.s0_sq)].astype(np.float32)[:, None]
        return VarianceStats(step=steps, mean=np.zeros_like(sm), var=sm, second_moment=sm,
                             tracked=[{"key": "w", "role": "linear", "layer": 0, "init_std": math.sqrt(model.s0_sq)}])

    return calibrate(Toy, pilot, rounds=2, tol=1e-9, log=lambda m: None)


@pytest.mark.parametrize("code", [errno.ENOSPC, errno.EIO])
def test_a_write_fault_in_a_calibration_save_leaves_the_old_folder_and_no_temp(tmp_path, monkeypatch, code):
    result = _toy_calibration()
    out = result.save(tmp_path / "calibration")
    before = digest(out)
    fail_replace(monkeypatch, code, "calibration.json")
    expected = f"cannot write the folder {out} (writing calibration.json): {os.strerror(code)} [Errno {code}: "
    with pytest.raises(WriteError, match="^" + re.escape(f"{expected}{errno.errorcode[code]}]")) as caught:
        result.save(out, overwrite=True)
    assert caught.value.errno == code and digest(out) == before and leftovers(tmp_path) == []
