"""Atomic training checkpoints: ``output_dir/checkpoints/step_N/``, complete or absent.

A checkpoint is written to ``checkpoints/.tmp_step_N`` (the Accelerate state, the variance records up to
N, ``trainer_state.json`` and the tokenizer), then a ``COMPLETE`` marker is written and fsynced last, and
the folder is renamed to ``step_N``. Resume reads only folders holding the marker, and the step comes from
``trainer_state.json``, never from the folder name. Old checkpoints are pruned only after a new one is
complete.
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

from hf_varinit.io_utils import _fsync_dir, atomic_write_json, atomic_write_text

CHECKPOINTS = "checkpoints"
COMPLETE = "COMPLETE"
TRAINER_STATE = "trainer_state.json"
_PREFIX = "step_"
_TMP_PREFIX = ".tmp_step_"


def checkpoint_root(output_dir: str | os.PathLike) -> Path:
    return Path(output_dir) / CHECKPOINTS


def is_complete(folder: str | os.PathLike) -> bool:
    folder = Path(folder)
    return (folder / COMPLETE).is_file() and (folder / TRAINER_STATE).is_file()


def read_trainer_state(folder: str | os.PathLike) -> dict[str, Any]:
    return json.loads((Path(folder) / TRAINER_STATE).read_text(encoding="utf-8"))


def complete_checkpoints(output_dir: str | os.PathLike) -> list[tuple[int, Path]]:
    """(step, folder) of every complete checkpoint, oldest first; the step read from trainer_state.json."""
    root = checkpoint_root(output_dir)
    if not root.is_dir():
        return []
    found = []
    for folder in root.iterdir():
        if folder.is_dir() and folder.name.startswith(_PREFIX) and is_complete(folder):
            try:
                found.append((int(read_trainer_state(folder)["step"]), folder))
            except (OSError, ValueError, KeyError, TypeError):
                continue  # an unreadable state is not a usable checkpoint
    return sorted(found, key=lambda x: x[0])


def find_latest_checkpoint(output_dir: str | os.PathLike) -> Path | None:
    """The newest complete checkpoint folder, or None."""
    found = complete_checkpoints(output_dir)
    return found[-1][1] if found else None


def begin_checkpoint(output_dir: str | os.PathLike, step: int) -> Path:
    """Create an empty ``checkpoints/.tmp_step_N`` (a leftover of a killed save is removed first)."""
    tmp = checkpoint_root(output_dir) / f"{_TMP_PREFIX}{step}"
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir(parents=True)
    return tmp


def finish_checkpoint(tmp: Path, step: int, trainer_state: dict[str, Any],
                      extra_writers: list[Callable[[Path], Any]] = ()) -> Path:
    """Write the extras and trainer_state.json into ``tmp``, then COMPLETE (fsynced), then rename to step_N."""
    for write in extra_writers:
        write(tmp)
    atomic_write_json(tmp / TRAINER_STATE, trainer_state)
    for name in os.listdir(tmp):  # everything fsynced before the marker says it is whole
        path = tmp / name
        if path.is_file():
            fd = os.open(path, os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
    atomic_write_text(tmp / COMPLETE, f"step {step}\n")
    final = tmp.parent / f"{_PREFIX}{step}"
    if final.exists():  # a stale folder of the same step (e.g. without the marker): replaced
        shutil.rmtree(final)
    os.replace(tmp, final)
    _fsync_dir(tmp.parent)
    return final


def prune_checkpoints(output_dir: str | os.PathLike, keep_last: int | None) -> list[Path]:
    """Delete all but the newest ``keep_last`` complete checkpoints and any stale temp folder; return removed."""
    removed = []
    root = checkpoint_root(output_dir)
    if keep_last is not None:
        for _, folder in complete_checkpoints(output_dir)[:-keep_last]:
            shutil.rmtree(folder, ignore_errors=True)
            removed.append(folder)
    if root.is_dir():
        for folder in root.iterdir():
            if folder.name.startswith(_TMP_PREFIX):
                shutil.rmtree(folder, ignore_errors=True)
                removed.append(folder)
    return removed


def save_checkpoint(accelerator, output_dir: Path, step: int, trainer_state: dict[str, Any], recorder, tokenizer,
                    metadata: dict, keep_last: int | None) -> None:
    """``checkpoints/step_N``: Accelerate state + records up to N + trainer_state.json + tokenizer, atomically.

    Every process writes its part of the Accelerate state (its RNG state) into the temp folder; the main
    process then adds the rest, the marker, renames, refreshes ``output_dir/variance.safetensors`` and prunes.
    """
    tmp = checkpoint_root(output_dir) / f"{_TMP_PREFIX}{step}"
    if accelerator.is_main_process:
        tmp = begin_checkpoint(output_dir, step)
    accelerator.wait_for_everyone()
    accelerator.save_state(str(tmp), safe_serialization=True)
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        writers = [lambda d: recorder.save(d, metadata), lambda d: tokenizer.save_pretrained(str(d))]
        finish_checkpoint(tmp, step, trainer_state, writers)
        recorder.save(output_dir, metadata)
        prune_checkpoints(output_dir, keep_last)
    accelerator.wait_for_everyone()


def load_checkpoint(accelerator, output_dir: Path, recorder, expected: dict[str, Any]) -> tuple[Path, dict]:
    """Restore the newest complete checkpoint (Accelerate state incl. RNG, the records up to its step).

    ``expected`` (the run's options and world size) must equal the checkpoint's: a different seed, batch, model,
    data or schedule would make a different run, not a continued one.
    Returns the folder and its trainer state.
    """
    from hf_varinit.errors import ConfigError
    from hf_varinit.record.stats_file import load_stats

    folder = find_latest_checkpoint(output_dir)
    if folder is None:
        raise ConfigError(f"--resume: no complete checkpoint in {checkpoint_root(output_dir)} (folders without a "
                          f"{COMPLETE} marker are ignored); run without --resume to start from scratch")
    state = read_trainer_state(folder)
    saved = {name: value for group in (state.get("options") or {}).values() for name, value in group.items()}
    saved["world_size"] = state.get("world_size")
    for key, value in expected.items():
        if json.loads(json.dumps(saved.get(key), default=str)) != json.loads(json.dumps(value, default=str)):
            raise ConfigError(f"--resume: {folder} was trained with {key}={saved.get(key)!r}, now {key}={value!r}; "
                              f"use the same value to continue the same run")
    accelerator.load_state(str(folder))
    recorder.load_records(load_stats(folder))
    recorder.truncate(int(state["step"]))
    return folder, state


def save_final(model, tokenizer, final_dir: Path) -> None:
    """``final/``: ``save_pretrained`` (safetensors, config with ``varinit_rule``) and the tokenizer, atomically."""
    tmp = final_dir.with_name(".tmp_final")
    if tmp.exists():
        shutil.rmtree(tmp)
    model.save_pretrained(str(tmp))
    tokenizer.save_pretrained(str(tmp))
    if final_dir.exists():
        shutil.rmtree(final_dir)
    os.replace(tmp, final_dir)
    _fsync_dir(final_dir.parent)
