"""Atomic training checkpoints: ``output_dir/checkpoints/step_N/``, complete or absent.

Every process writes its part of the Accelerate state into ``checkpoints/.tmp_step_N``; the main process adds
the variance records up to N, ``trainer_state.json`` (a `RunState`) and the tokenizer, and
`hf_varinit.io_utils.commit_folder` writes the ``COMPLETE`` marker last and renames the folder to ``step_N``.
Resume reads only folders holding the marker, and the step comes from ``trainer_state.json``, never from the
folder name; every rank must find the same one. Old checkpoints are pruned only after a new one is complete.

A failed write (a full disk, an I/O error) on any rank stops every rank with the same `WriteError` naming the
folder or file (`hf_varinit.train.faults.all_ranks_write`): the staging folder is removed, and the previous
checkpoint, ``variance.safetensors`` and ``final/`` are as they were, so ``--resume`` continues once there is space.

Sharded weights: under Accelerate's FSDP, ``save_state`` writes each rank's shards itself (SHARDED_STATE_DICT);
under torch's ``fully_shard`` without it (`build.prepare_model`), `save_sharded_state` adds the model and optimizer
shards as a ``torch.distributed.checkpoint`` folder. ``final/`` is always one ``save_pretrained`` of the full
weights (`full_state_dict` gathers them).
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.distributed.checkpoint as dcp
from accelerate.utils import extract_model_from_parallel
from torch.distributed.checkpoint.state_dict import (
    StateDictOptions,
    get_model_state_dict,
    get_state_dict,
    set_state_dict,
)
from torch.distributed.tensor import DTensor

from hf_varinit.errors import ConfigError, is_write_failure, write_error
from hf_varinit.io_utils import atomic_folder, atomic_write_json, commit_folder, staging_folder
from hf_varinit.record.stats_file import load_stats
from hf_varinit.train.faults import all_ranks_write

CHECKPOINTS = "checkpoints"
STATS = "variance.safetensors"
COMPLETE = "COMPLETE"
TRAINER_STATE = "trainer_state.json"
_PREFIX = "step_"
_TMP_PREFIX = ".tmp_step_"
SHARDED = "sharded_state"  # the torch.distributed.checkpoint folder of the fully_shard path

# Options a resumed run may change; any other difference would make it a different run.
RESUMABLE_CHANGES = frozenset({"output_dir", "resume", "eval_every", "eval_batches", "log_every", "report_to",
                               "checkpoint_every", "keep_last", "cache_dir", "on_nonfinite", "disable_tqdm",
                               "compile", "collective_timeout"})
# Options a resumed run may raise (never lower): max_steps continues a run past its end, the warmup + cosine
# schedule rebuilt over the new value.
GROWABLE = frozenset({"max_steps"})


@dataclass
class RunState:
    """Where a run stands: what ``trainer_state.json`` holds, and all a resume needs besides the Accelerate state."""

    step: int = 0  # optimizer steps taken
    tokens: int = 0  # tokens trained on, over all processes
    epoch: int = 0  # passes over the train blocks
    position: int = 0  # micro-batches consumed in the current epoch
    nonfinite_skips: int = 0  # steps skipped for a NaN/inf loss (--on-nonfinite skip)
    scaler_skips: int = 0  # fp16 steps the grad scaler skipped
    world_size: int = 1  # processes
    options: dict[str, dict[str, Any]] = field(default_factory=dict)  # `PretrainOptions.to_dict()`

    def save(self, folder: str | os.PathLike) -> Path:
        return atomic_write_json(Path(folder) / TRAINER_STATE, dataclasses.asdict(self))

    @classmethod
    def load(cls, folder: str | os.PathLike) -> RunState:
        """Read ``folder/trainer_state.json`` (keys this version does not know are ignored)."""
        path = Path(folder) / TRAINER_STATE
        raw = json.loads(path.read_text(encoding="utf-8"))
        if not isinstance(raw, dict) or "step" not in raw:
            raise ValueError(f"{path} holds no step")
        return cls(**{f.name: raw[f.name] for f in dataclasses.fields(cls) if f.name in raw})

    def check_continues(self, folder: Path, options: dict[str, dict[str, Any]], world_size: int) -> None:
        """Raise `ConfigError` unless ``options`` and ``world_size`` make the same run as this state's.

        A different seed, batch, model, data or schedule would make a different run, not a continued one; only
        `RESUMABLE_CHANGES` may differ, and `GROWABLE` may grow (``max_steps`` at least this state's step).
        """
        saved = {name: value for group in self.options.values() for name, value in group.items()}
        saved["world_size"] = self.world_size
        expected = {name: value for group in options.values() for name, value in group.items()
                    if name not in RESUMABLE_CHANGES}
        expected["world_size"] = world_size
        for key in GROWABLE & expected.keys():
            value, before = expected.pop(key), saved.get(key)
            if before is not None and value < before:
                raise ConfigError(f"--resume: {folder} was trained with {key}={before!r}, now {key}={value!r}; "
                                  f"{key} may grow to continue a run, not shrink: use {key} >= {before}")
        for key, value in expected.items():
            if json.loads(json.dumps(saved.get(key), default=str)) != json.loads(json.dumps(value, default=str)):
                raise ConfigError(f"--resume: {folder} was trained with {key}={saved.get(key)!r}, now "
                                  f"{key}={value!r}; use the same value to continue the same run")


def checkpoint_root(output_dir: str | os.PathLike) -> Path:
    return Path(output_dir) / CHECKPOINTS


def is_complete(folder: str | os.PathLike) -> bool:
    folder = Path(folder)
    return (folder / COMPLETE).is_file() and (folder / TRAINER_STATE).is_file()


def complete_checkpoints(output_dir: str | os.PathLike) -> list[tuple[int, Path]]:
    """(step, folder) of every complete checkpoint, oldest first; the step read from trainer_state.json."""
    root = checkpoint_root(output_dir)
    if not root.is_dir():
        return []
    found = []
    for folder in root.iterdir():
        if folder.is_dir() and folder.name.startswith(_PREFIX) and is_complete(folder):
            try:
                found.append((int(RunState.load(folder).step), folder))
            except (OSError, ValueError, TypeError):
                continue  # an unreadable state is not a usable checkpoint
    return sorted(found, key=lambda x: x[0])


def find_latest_checkpoint(output_dir: str | os.PathLike) -> Path | None:
    """The newest complete checkpoint folder, or None."""
    found = complete_checkpoints(output_dir)
    return found[-1][1] if found else None


def prune_checkpoints(output_dir: str | os.PathLike, keep_last: int | None) -> list[Path]:
    """Delete all but the newest ``keep_last`` complete checkpoints and any leftover of a killed save."""
    removed = []
    if keep_last is not None:
        for _, folder in complete_checkpoints(output_dir)[:-keep_last]:
            shutil.rmtree(folder, ignore_errors=True)
            removed.append(folder)
    root = checkpoint_root(output_dir)
    if root.is_dir():
        for folder in root.iterdir():
            if folder.name.startswith("."):  # a staging folder, or a replaced one not yet removed
                shutil.rmtree(folder, ignore_errors=True)
                removed.append(folder)
    return removed


def _resume_hint(output_dir: Path) -> Callable[[], str]:
    """What a failed write's message says to do next: resume from the newest complete checkpoint, if there is one."""
    def hint() -> str:
        last = find_latest_checkpoint(output_dir)
        return (f"continue with --resume (from {last.name}, the newest complete checkpoint, left intact)" if last
                else "run again (no checkpoint was complete yet)")
    return hint


def save_checkpoint(accelerator, output_dir: Path, state: RunState, recorder, tokenizer, metadata: dict,
                    keep_last: int | None) -> Path:
    """``checkpoints/step_N``: Accelerate state + records up to N + trainer_state.json + tokenizer, atomically.

    Every process writes its part of the Accelerate state (its RNG state; its shards under ``fully_shard``) into the
    staging folder; the main process then adds the rest and commits it, refreshes ``output_dir/variance.safetensors``
    and prunes. Each phase ends with every rank agreeing on its outcome (`all_ranks_write`).

    Raises:
        `WriteError`: on every rank, when a rank's write failed; the staging folder is removed, the previous
            checkpoints and ``variance.safetensors`` are untouched.
    """
    main = accelerator.is_main_process
    dest = checkpoint_root(output_dir) / f"{_PREFIX}{state.step}"
    tmp = dest.parent / f"{_TMP_PREFIX}{state.step}"
    hint = _resume_hint(output_dir)

    def remove_staging() -> None:
        if main:
            shutil.rmtree(tmp, ignore_errors=True)

    with all_ranks_write(accelerator, dest, what="the checkpoint", then=hint, cleanup=remove_staging):
        if main:
            staging_folder(dest, name=tmp.name)  # a leftover of a killed save is emptied first
    with all_ranks_write(accelerator, dest, what="the checkpoint", then=hint, cleanup=remove_staging):
        accelerator.save_state(str(tmp), safe_serialization=True)
    with all_ranks_write(accelerator, dest, what="the checkpoint", then=hint, cleanup=remove_staging):
        if main:
            recorder.save(tmp, metadata)
            tokenizer.save_pretrained(str(tmp))
            state.save(tmp)
            commit_folder(tmp, dest, complete_marker=COMPLETE)
    with all_ranks_write(accelerator, output_dir / STATS, what="the statistics file", then=hint):
        if main:  # the checkpoint is complete: a failure here leaves the previous statistics file
            recorder.save(output_dir, metadata)
            prune_checkpoints(output_dir, keep_last)
    return dest


def save_outputs(accelerator, output_dir: Path, model, recorder, tokenizer, metadata: dict, tokens: int) -> Path:
    """At the end of a run: ``variance.safetensors`` (with ``metadata``), then ``final/`` (`save_final`), written
    by the main process; every rank gathers the sharded weights first and agrees on the outcome last.

    Returns:
        The ``final/`` folder.

    Raises:
        `WriteError`: on every rank, when a write failed (naming the file or ``final/``; nothing half-written).
    """
    final_dir = output_dir / "final"
    weights = full_state_dict(model)  # gathered on every rank when sharded (None otherwise)
    hint = _resume_hint(output_dir)
    with all_ranks_write(accelerator, output_dir / STATS, what="the statistics file", then=hint):
        if accelerator.is_main_process:
            recorder.save(output_dir, metadata)
    with all_ranks_write(accelerator, final_dir, what="final/", then=hint):
        if accelerator.is_main_process:
            unwrapped = extract_model_from_parallel(model)
            unwrapped.config.varinit_train_tokens = tokens  # the weights' training cost, for a report of them
            save_final(unwrapped, tokenizer, final_dir, weights)
    return final_dir


def load_checkpoint(accelerator, output_dir: Path, recorder, options: dict[str, dict[str, Any]]
                    ) -> tuple[Path, RunState]:
    """Restore the newest complete checkpoint (Accelerate state incl. RNG, the records up to its step).

    Args:
        options (`dict`): the run's `PretrainOptions.to_dict()`; must continue the checkpoint's run
            (`RunState.check_continues`).

    Returns:
        The folder and its `RunState`.

    Raises:
        `ConfigError`: no complete checkpoint, options that make another run, or processes that see different
            newest checkpoints (an output folder that is not one shared folder).
    """
    folder = find_latest_checkpoint(output_dir)
    if accelerator.num_processes > 1:  # every rank must continue from the same checkpoint
        seen = [None] * accelerator.num_processes
        torch.distributed.all_gather_object(seen, None if folder is None else str(folder))
        if len(set(seen)) > 1:
            found = ", ".join(f"rank {rank}: {name}" for rank, name in enumerate(seen))
            raise ConfigError(f"--resume: the processes see different newest checkpoints in "
                              f"{checkpoint_root(output_dir)} ({found}); give every process the same shared "
                              f"--output-dir")
    if folder is None:
        raise ConfigError(f"--resume: no complete checkpoint in {checkpoint_root(output_dir)} (folders without a "
                          f"{COMPLETE} marker are ignored); run without --resume to start from scratch")
    state = RunState.load(folder)
    state.check_continues(folder, options, accelerator.num_processes)
    accelerator.load_state(str(folder))
    recorder.load_records(load_stats(folder))
    recorder.truncate(int(state.step))
    return folder, state


def save_sharded_state(models, weights, output_dir: str, *, model, optimizer) -> None:
    """Accelerate ``save_state`` hook of the ``fully_shard`` path: every rank writes its model and optimizer shards
    to ``output_dir/sharded_state`` (``torch.distributed.checkpoint``; a collective)."""
    model_state, optim_state = get_state_dict(extract_model_from_parallel(model), optimizer)
    dcp.save({"model": model_state, "optimizer": optim_state}, checkpoint_id=Path(output_dir) / SHARDED)


def load_sharded_state(models, input_dir: str, *, model, optimizer) -> None:
    """Accelerate ``load_state`` hook: restore what `save_sharded_state` wrote, into this rank's shards."""
    bare = extract_model_from_parallel(model)
    model_state, optim_state = get_state_dict(bare, optimizer)
    state = {"model": model_state, "optimizer": optim_state}
    dcp.load(state, checkpoint_id=Path(input_dir) / SHARDED)
    set_state_dict(bare, optimizer, model_state_dict=state["model"], optim_state_dict=state["optimizer"])


def full_state_dict(model) -> dict[str, torch.Tensor] | None:
    """The full weights of a sharded (DTensor) model on the CPU, gathered from every rank (a collective: call it on
    all ranks); None for an unsharded model, whose ``save_pretrained`` reads its own tensors."""
    bare = extract_model_from_parallel(model)
    if not any(isinstance(p, DTensor) for p in bare.parameters()):
        return None
    state = get_model_state_dict(bare, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
    first: dict[int, str] = {}
    tied = {name for name, p in bare.named_parameters(remove_duplicate=False) if first.setdefault(id(p), name) != name}
    return {name: tensor for name, tensor in state.items() if name not in tied}  # a tied copy (lm_head) once


def save_final(model, tokenizer, final_dir: Path, state_dict: dict[str, torch.Tensor] | None = None) -> Path:
    """``final/``: ``save_pretrained`` (safetensors, config with ``varinit_rule``) and the tokenizer, atomically.

    Args:
        state_dict (`dict`, *optional*): the full weights of a sharded model (`full_state_dict`).

    Raises:
        `WriteError`: a write failed (a full disk, an I/O error): ``final/`` is as it was, no staging folder is left.
    """
    try:
        with atomic_folder(final_dir) as tmp:
            model.save_pretrained(str(tmp), state_dict=state_dict)
            tokenizer.save_pretrained(str(tmp))
    except Exception as exc:
        if is_write_failure(exc):  # safetensors' and torch's writers raise their own types
            raise write_error(final_dir, exc, what="final/") from exc
        raise
    return final_dir
