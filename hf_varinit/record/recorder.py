"""`VarianceRecorder`: per-layer Q/K/V (and projection, embedding, head) weight statistics during training.

Each record reduces the tracked weights with a moment kernel and moves the result to the host in a single
transfer, no ``.item()``: dense and ZeRO-3 weights with `moments.DenseMoments` (one pass per parameter, whatever
its Q/K/V slices, the rows added into their entries on the host in float64), FSDP2 shards with `moments.var_mean`
(per-rank partial sums, one all-reduce).
"""

from __future__ import annotations

import json
import os
import reprlib
import warnings
from pathlib import Path

import numpy as np
import torch
from accelerate.utils import extract_model_from_parallel
from torch import nn

from hf_varinit.arch.config import num_layers
from hf_varinit.errors import HFVarInitError, RoleError, StatsError
from hf_varinit.init.patch import init_plan
from hf_varinit.init.roles import TensorRole, tracked_roles
from hf_varinit.record.moments import (
    DenseMoments,
    is_sharded,
    is_zero3,
    needs_all_ranks,
    rebind,
    require_deepspeed,
    second_moment,
    var_mean,
)
from hf_varinit.record.stats_file import save_stats


def unwrap(model: nn.Module) -> nn.Module:
    """The bare model inside DDP / DeepSpeed / FSDP / ``torch.compile`` wrappers, in any nesting."""
    while (inner := extract_model_from_parallel(model, keep_torch_compile=False)) is not model:
        model = inner
    return model


def shape_model(model: nn.Module) -> nn.Module:
    """The model whose parameter shapes the roles are read from: ``model``, or under DeepSpeed ZeRO-3 (empty
    placeholders) a twin built from its config on the meta device (no memory; same names and shapes)."""
    if not any(is_zero3(p) for p in model.parameters()):
        return model
    config = getattr(model, "config", None)
    if config is None:
        raise RoleError(f"{type(model).__name__}: ZeRO-3 partitioned parameters and no config to read the full "
                        "shapes from; record a transformers model, or gather the weights first")
    with torch.device("meta"):
        return type(model)(config)


def _check_step(step) -> int:
    """``step`` as an int: an integer (Python, numpy or a 0-d integer tensor), never a bool, float or string."""
    if isinstance(step, torch.Tensor) and step.numel() == 1 and not step.is_floating_point():
        step = step.item()
    if isinstance(step, (bool, np.bool_)) or not isinstance(step, (int, np.integer)):
        raise StatsError(f"VarianceRecorder: step={reprlib.repr(step)} must be an integer (the optimizer step)")
    return int(step)


class VarianceRecorder:
    """Record mean, variance and second moment of every tracked weight every ``every`` steps.

    Under FSDP2 (``fully_shard``) the statistics are computed from the shards with one all-reduce; under
    DeepSpeed ZeRO-3 each tracked tensor is gathered in turn. Either way `record` is then a collective that every
    rank calls (`collective`), and only the main process should `save`. Sharding replaces the parameters: build
    the recorder after it, or call `rebind` with the sharded (or compiled) model.

    Args:
        model (`nn.Module`): the model (wrapped or not); its tracked tensors come from `roles.tracked_roles`.
        every (`int`): record when ``step % every == 0``; call `record` at the final step as well.
        rule: the init rule the model was built with (default: the one `from_config` / `apply_init` used); its
            spec goes into the metadata, with each tensor's init std.

    Example:
        >>> recorder = VarianceRecorder(model, every=10)
        >>> recorder.record(0)            # the init
        >>> ...; recorder.maybe_record(step)
        >>> recorder.save("runs/k")       # runs/k/variance.safetensors
    """

    def __init__(self, model: nn.Module, every: int = 1, rule=None):
        if isinstance(every, bool) or not isinstance(every, int) or every < 1:
            raise StatsError(f"VarianceRecorder: every={every!r} must be an integer >= 1, e.g. every=10")
        if not isinstance(model, nn.Module):
            raise RoleError(f"VarianceRecorder: model={reprlib.repr(model)} is not a torch nn.Module; pass the model "
                            "being trained")
        self.model = unwrap(model)
        self.every = every
        self._shapes = shape_model(self.model)
        if self._shapes is not self.model:
            require_deepspeed("VarianceRecorder")
        roles = [entry for entry, _ in tracked_roles(self._shapes)]
        self.entries: list[tuple[TensorRole, nn.Parameter]] = rebind(roles, self.model)
        if not self.entries:
            raise StatsError(f"{type(self.model).__name__} has no tracked weights (no linear or embedding layers)")
        self._dense = self._dense_kernel()
        # default: the rule `from_config` / `apply_init` built the model with
        self.rule = rule if rule is not None else getattr(self.model, "varinit_init_rule", None)
        self._steps: list[int] = []
        self._rows: list[np.ndarray] = []  # one (T, 2) array [var, mean] per record

    @property
    def keys(self) -> list[str]:
        return [entry.key for entry, _ in self.entries]

    @property
    def steps(self) -> list[int]:
        return list(self._steps)

    @property
    def collective(self) -> bool:
        """Whether `record` is a collective (sharded or ZeRO-3 weights): then every rank must call it."""
        return needs_all_ranks(self.entries)

    def rebind(self, model: nn.Module) -> None:
        """Follow ``model``'s current parameters (after ``fully_shard``, ``accelerator.prepare`` or
        ``torch.compile``), keeping the roles taken from the model the recorder was built with."""
        self.model = unwrap(model)
        self.entries = rebind([entry for entry, _ in self.entries], self.model)
        self._dense = self._dense_kernel()

    def _dense_kernel(self) -> DenseMoments | None:
        """The one-pass kernel of unsharded weights (the full shapes from `shape_model` under ZeRO-3)."""
        if is_sharded(self.entries):
            return None
        return DenseMoments(self.entries, [tuple(self._shapes.get_parameter(e.name).shape) for e, _ in self.entries])

    @torch.no_grad()
    def compute(self) -> torch.Tensor:
        """(T, 2) float32 tensor of [population variance, mean] per tracked tensor, on the CPU (one transfer)."""
        return self._dense() if self._dense is not None else var_mean(self.entries).cpu()

    def record(self, step: int) -> None:
        """Record the statistics at ``step`` (steps must increase; a repeated step is ignored)."""
        step = _check_step(step)
        if self._steps and step <= self._steps[-1]:
            if step == self._steps[-1]:
                return
            raise StatsError(f"VarianceRecorder: step {step} is before the last recorded step {self._steps[-1]}")
        self._rows.append(self.compute().numpy())  # computed with one device-to-host transfer
        self._steps.append(int(step))

    def maybe_record(self, step: int) -> bool:
        """Record if ``step`` is a multiple of ``every``; return whether it did."""
        step = _check_step(step)
        if step % self.every == 0:
            self.record(step)
            return True
        return False

    def truncate(self, max_step: int) -> None:
        """Drop records after ``max_step`` (used when resuming from a checkpoint)."""
        keep = [i for i, s in enumerate(self._steps) if s <= max_step]
        self._steps = [self._steps[i] for i in keep]
        self._rows = [self._rows[i] for i in keep]

    def load_records(self, stats) -> None:
        """Continue from a loaded `VarianceStats` (same tracked keys, in order)."""
        if list(stats.keys) != self.keys:
            missing, extra = sorted(set(self.keys) - set(stats.keys)), sorted(set(stats.keys) - set(self.keys))
            raise StatsError(f"the statistics file tracks different tensors than this model (missing {missing[:5]}, "
                             f"extra {extra[:5]}); continue it with the same model, or start a fresh --output-dir")
        self._steps = [int(s) for s in stats.step]
        self._rows = [np.stack([stats.var[i], stats.mean[i]], axis=1) for i in range(len(stats.step))]

    def arrays(self) -> dict[str, np.ndarray]:
        """The records as arrays: ``step`` (S,), ``mean``, ``var``, ``second_moment`` (S, T)."""
        if not self._rows:
            t = len(self.entries)
            empty = np.zeros((0, t), dtype=np.float32)
            return {"step": np.zeros(0, dtype=np.int64), "mean": empty, "var": empty, "second_moment": empty}
        stacked = np.stack(self._rows).astype(np.float32)  # (S, T, 2)
        var, mean = stacked[..., 0], stacked[..., 1]
        return {
            "step": np.asarray(self._steps, dtype=np.int64),
            "mean": mean,
            "var": var,
            "second_moment": second_moment(var, mean),
        }

    def tracked(self) -> list[dict]:
        """Per tracked tensor: key, name, role, layer, slice, fans, numel and the init std of the rule."""
        init_std = self._init_stds()
        return [
            {
                "key": e.key,
                "name": e.name,
                "role": e.role,
                "layer": e.layer,
                "slice": str(e.slice) if e.slice is not None else None,
                "fan_in": e.fan_in,
                "fan_out": e.fan_out,
                "numel": int(np.prod(e.shape)),
                "init_std": init_std.get(e.key),
            }
            for e, _ in self.entries
        ]

    def _init_stds(self) -> dict[str, float]:
        if self.rule is None:
            return {}
        try:
            return {row.key: row.std for row in init_plan(self._shapes, self.rule) if row.std is not None}
        except (HFVarInitError, OSError) as exc:  # a report gone by now must not stop the run from saving
            warnings.warn(f"init std of rule {self.rule!r} unknown ({exc}); the report's V(W)/init ratio will use "
                          "the first record instead", stacklevel=2)
            return {}

    def metadata(self) -> dict:
        """Model facts for the statistics file (model_type, config, n_layer, rule)."""
        config = getattr(self.model, "config", None)
        rule = self.rule if self.rule is None or isinstance(self.rule, str) else getattr(self.rule, "spec", None)
        return {
            "model_type": getattr(config, "model_type", None) or type(self.model).__name__,
            "config": json.loads(config.to_json_string(use_diff=False)) if config is not None else {},
            "n_layer": num_layers(config) if config is not None else None,
            "rule": rule,
            "record_every": self.every,
        }

    def save(self, path: str | os.PathLike, metadata: dict | None = None) -> Path:
        """Write ``variance.safetensors`` (a folder or a file path) atomically; return its path."""
        meta = {**self.metadata(), **(metadata or {})}
        return save_stats(path, **self.arrays(), tracked=self.tracked(), metadata=meta)
