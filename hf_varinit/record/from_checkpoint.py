"""Variance statistics of a trained checkpoint, read tensor by tensor without building the model.

One set of weights gives the second moment E[W^2] per layer and per Q/K/V slice, with no training (one
snapshot, not a training record: whether the weights had settled cannot be judged from it). The checkpoint's
``config.json`` gives the roles (a model built on the meta device: no memory), and each tracked tensor is read
alone with ``safe_open``, so peak memory is bounded by the largest tensor, not by the checkpoint. Pickle-based
weights (``.bin``, ``.pt``) are refused, never loaded.
"""

from __future__ import annotations

import copy
import json
import os
import warnings
from pathlib import Path

import numpy as np
import torch
from huggingface_hub import snapshot_download
from huggingface_hub.errors import StrictDataclassError
from safetensors import safe_open
from transformers import AutoConfig

from hf_varinit.arch.config import check_config_sizes, num_layers
from hf_varinit.errors import HFVarInitError, ReportError, shown
from hf_varinit.init.patch import from_config, init_plan
from hf_varinit.init.roles import tracked_roles
from hf_varinit.record.moments import combine, partial_sums, second_moment
from hf_varinit.record.stats_file import VarianceStats

SINGLE_FILE = "model.safetensors"
INDEX_FILE = "model.safetensors.index.json"


def is_local_checkpoint(source: str | os.PathLike) -> bool:
    """Whether ``source`` names a local path (otherwise it is read as a hub model id)."""
    return Path(source).exists()


def resolve_checkpoint(source: str | os.PathLike) -> Path:
    """A local ``save_pretrained`` folder, or a hub id downloaded (config and safetensors only)."""
    path = Path(source)
    if path.is_dir():
        return path
    if path.exists():
        raise ReportError(f"{source}: expected a save_pretrained folder (config.json + *.safetensors), got a file")
    try:
        return Path(snapshot_download(str(source), allow_patterns=["*.json", "*.safetensors"]))
    except Exception as exc:  # offline, unknown repo, auth: one clear message
        raise ReportError(
            f"{source!r} is not a local folder and could not be fetched from the hub ({type(exc).__name__}: "
            f"{exc}); pass a local save_pretrained folder or go online"
        ) from None


def _unreadable(path: Path, exc: Exception) -> ReportError:
    """The error for a weights file that safetensors cannot read (corrupt, truncated, random bytes, missing)."""
    detail = shown(" ".join(str(exc).split()), 200)[1:-1]
    return ReportError(f"{path}: not a readable safetensors file ({type(exc).__name__}: {detail}); re-save the "
                       "model with save_pretrained(safe_serialization=True)")


def weight_map(folder: Path) -> dict[str, Path]:
    """Tensor name -> safetensors file of a single-file or sharded checkpoint."""
    if (folder / INDEX_FILE).is_file():
        try:
            index = json.loads((folder / INDEX_FILE).read_text())
            return {name: folder / file for name, file in index["weight_map"].items()}
        except (ValueError, KeyError, TypeError, AttributeError) as exc:
            raise ReportError(f"{folder / INDEX_FILE}: not a valid safetensors index ({exc})") from None
    if (folder / SINGLE_FILE).is_file():
        try:
            with safe_open(folder / SINGLE_FILE, framework="np") as f:
                return {name: folder / SINGLE_FILE for name in f.keys()}
        except Exception as exc:  # safetensors' own error type, OSError...
            raise _unreadable(folder / SINGLE_FILE, exc) from None
    pickled = sorted(p.name for p in folder.glob("*") if p.suffix in (".bin", ".pt", ".pth", ".ckpt", ".pkl"))
    hint = f" (found {', '.join(pickled)}: pickle-based weights are never loaded; re-save with " \
           "save_pretrained(safe_serialization=True))" if pickled else ""
    raise ReportError(f"{folder}: no {SINGLE_FILE} or {INDEX_FILE}{hint}")


class _TensorReader:
    """Reads one tensor at a time, keeping only the last one (Q/K/V slices share their fused tensor)."""

    def __init__(self, files: dict[str, Path]):
        self.files = files
        self._name: str | None = None
        self._tensor: torch.Tensor | None = None

    def get(self, name: str) -> torch.Tensor:
        if name != self._name:
            self._tensor = None  # drop the previous tensor before reading the next
            path = self.files[name]
            try:
                try:
                    with safe_open(path, framework="np") as f:
                        self._tensor = torch.from_numpy(f.get_tensor(name))
                except TypeError:  # bfloat16 has no numpy dtype
                    with safe_open(path, framework="pt") as f:
                        self._tensor = f.get_tensor(name)
            except Exception as exc:  # a corrupt or missing shard, a tensor the index names but the file lacks
                raise _unreadable(path, exc) from None
            self._name = name
        return self._tensor


def _match(name: str, files: dict[str, Path], prefix: str) -> str | None:
    if name in files:
        return name
    if prefix and name.startswith(prefix + ".") and name[len(prefix) + 1 :] in files:
        return name[len(prefix) + 1 :]
    if prefix and f"{prefix}.{name}" in files:
        return f"{prefix}.{name}"
    return None


def stats_from_checkpoint(source: str | os.PathLike) -> VarianceStats:
    """Mean, variance and second moment of every tracked tensor / slice of a checkpoint (one record).

    The init rule is the checkpoint's own ``config.varinit_rule`` (written by `from_config`), or None when the
    config does not record one. The metadata says ``source: "checkpoint"`` and names the checkpoint
    (``checkpoint``), and ``hub_id`` when it was downloaded from the hub.

    Args:
        source: a ``save_pretrained`` folder (single or sharded safetensors) or a hub id.
    """
    folder = resolve_checkpoint(source)
    try:
        config = AutoConfig.from_pretrained(folder)
        check_config_sizes(config)
    except (OSError, ValueError, TypeError, KeyError, AttributeError, StrictDataclassError) as exc:  # any bad field
        raise ReportError(f"{source}: cannot read config.json ({shown(' '.join(str(exc).split()), 300)[1:-1]}); "
                          "give a save_pretrained folder with a valid config.json") from None
    files = weight_map(folder)
    rule = getattr(config, "varinit_rule", None)  # read before from_config records its own rule in a config
    with torch.device("meta"):  # roles and shapes only
        model = from_config(copy.deepcopy(config), "hf")
    prefix = getattr(model, "base_model_prefix", "")
    reader = _TensorReader(files)
    init_std = {}
    if rule:
        try:
            init_std = {row.key: row.std for row in init_plan(model, rule)}
        except (HFVarInitError, OSError) as exc:  # e.g. an optimal rule whose report is not at hand
            warnings.warn(f"init std of the checkpoint's rule {rule!r} unknown ({exc})", stacklevel=2)
            init_std = {}
    counts, sums, tracked, absent = [], [], [], []
    for entry, param in tracked_roles(model):
        name = _match(entry.name, files, prefix)
        if name is None:
            absent.append(entry.name)  # e.g. a head the checkpoint does not have
            continue
        raw = reader.get(name)
        if tuple(raw.shape) != tuple(param.shape):
            raise ReportError(f"{source}: tensor {name!r} has shape {tuple(raw.shape)} in the weights but "
                              f"{tuple(param.shape)} in the model config.json describes; the weights and the "
                              "config do not belong together")
        tensor = entry.view(raw)
        counts.append(tensor.numel())
        sums.append(partial_sums(tensor))  # two numbers kept per tensor; the tensor itself is dropped
        tracked.append({"key": entry.key, "name": name, "role": entry.role, "layer": entry.layer,
                        "slice": str(entry.slice) if entry.slice else None, "fan_in": entry.fan_in,
                        "fan_out": entry.fan_out, "numel": tensor.numel(), "init_std": init_std.get(entry.key)})
    if not sums:
        raise ReportError(f"{source}: none of the model's tracked tensors were found in the checkpoint")
    var_mean = combine(torch.tensor(counts), torch.stack(sums)).numpy()  # (T, 2): var, mean
    var, mean = var_mean[None, :, 0], var_mean[None, :, 1]  # one record: (1, T)
    metadata = {
        "format": "hf_varinit.variance", "format_version": 1, "model_type": config.model_type,
        "config": json.loads(config.to_json_string(use_diff=False)), "n_layer": num_layers(config),
        "rule": rule, "source": "checkpoint", "checkpoint": str(source), "absent_tensors": absent,
    }
    tokens = getattr(config, "varinit_train_tokens", None)  # written by `hf-varinit pretrain` into final/
    if isinstance(tokens, int) and not isinstance(tokens, bool) and tokens >= 0:
        metadata["train_tokens"] = tokens
    if not is_local_checkpoint(source):
        metadata["hub_id"] = str(source)
    return VarianceStats(step=np.zeros(1, dtype=np.int64), mean=mean, var=var, second_moment=second_moment(var, mean),
                         tracked=tracked, metadata=metadata, path=None)
