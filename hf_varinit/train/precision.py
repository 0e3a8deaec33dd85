"""Mixed precision in the loop: fp16 with a grad scaler on any device, and an optimizer step that knows when the
scaler skipped it.

* ``bf16``: Accelerate's autocast, on CUDA and on CPU.
* ``fp16``: on CUDA, Accelerate's float16 autocast and ``GradScaler``. On CPU, Accelerate (1.x) turns neither on,
  so the run would train in float32 while its files say fp16; `enable_cpu_fp16` gives the Accelerator torch's CPU
  float16 autocast and ``torch.amp.GradScaler("cpu")`` through the two attributes Accelerate sets itself on a GPU
  (``native_amp`` and ``scaler``). The fp16 path that runs on CPU is then the one a GPU runs: the scaled backward,
  the unscale before clipping, the scaler's step and update, its state in every checkpoint.

`optimizer_step` is the end of a training step: clip, step, and the schedule unless the scaler skipped the update.
Accelerate's ``optimizer_step_was_skipped`` only sees a skip when the scaler did not call ``optimizer.step``; the
loop's fused AdamW (``_step_supports_amp_scaling``) is always called and skips inside its kernel, so a skip is read
from the scale instead: ``GradScaler.update`` lowers the scale exactly when it found an inf/NaN gradient.

Example:
    >>> accelerator = enable_cpu_fp16(Accelerator(mixed_precision="fp16", cpu=True))  # doctest: +SKIP
    >>> grad_norm, skipped = optimizer_step(accelerator, model, optimizer, scheduler, clip=1.0)  # doctest: +SKIP
"""

from __future__ import annotations

import os

import torch
from accelerate import Accelerator
from accelerate.utils import DistributedType

from hf_varinit.errors import ConfigError
from hf_varinit.train.build import FULLY_SHARD_ENV

__all__ = ["enable_cpu_fp16", "optimizer_step"]


def enable_cpu_fp16(accelerator: Accelerator) -> Accelerator:
    """Give a CPU Accelerator with ``mixed_precision="fp16"`` the float16 autocast and grad scaler it lacks.

    Call it before ``accelerator.prepare`` (the autocast wrapper and the scaler are attached there). Anything else
    (CUDA, bf16, no mixed precision) is returned untouched.

    Raises:
        `ConfigError`: fp16 with ``HF_VARINIT_FULLY_SHARD=1``: that path shards the model itself, outside
            ``accelerator.prepare``, so the scaled gradients would reach the optimizer unscaled-for.
    """
    if accelerator.mixed_precision != "fp16":
        return accelerator
    asked = os.environ.get(FULLY_SHARD_ENV, "").strip().lower() not in ("", "0", "false", "no", "off")
    if asked and accelerator.distributed_type != DistributedType.FSDP:  # as `build.fully_shard_requested` reads it
        raise ConfigError(f"--mixed-precision fp16 with {FULLY_SHARD_ENV}=1: torch's fully_shard path has no grad "
                          f"scaler; use --mixed-precision bf16 or no, or Accelerate's FSDP2 "
                          f"(accelerate launch --use_fsdp --fsdp_version 2) on GPUs")
    if accelerator.device.type != "cpu" or accelerator.scaler is not None:
        return accelerator
    accelerator.native_amp = True  # float16 autocast around the prepared model's forward
    accelerator.scaler = torch.amp.GradScaler("cpu")
    return accelerator


def optimizer_step(accelerator: Accelerator, model: torch.nn.Module, optimizer, scheduler, clip: float | None,
                   measure_norm: bool = False) -> tuple[torch.Tensor | None, bool]:
    """Clip the gradients (or only measure their norm), step the optimizer, and step the schedule unless the fp16
    grad scaler skipped the update (then the weights, the optimizer state and the lr stay as they were).

    Args:
        clip (`float`, *optional*): max gradient norm; None or 0 = no clipping.
        measure_norm (`bool`): measure the norm without clipping (a metrics line wants it).

    Returns:
        (the total gradient norm before clipping, unscaled, or None when neither clipped nor measured;
        whether the scaler skipped the step). With a scaler, the skip is read from its scale: one host
        transfer per step, fp16 only.
    """
    grad_norm = None
    if clip or measure_norm:
        params = [p for p in model.parameters() if p.requires_grad]
        grad_norm = accelerator.clip_grad_norm_(params, clip or float("inf"))
    scaler = accelerator.scaler
    scale = scaler.get_scale() if scaler is not None else None
    optimizer.step()
    skipped = accelerator.optimizer_step_was_skipped or (scaler is not None and scaler.get_scale() < scale)
    if not skipped:
        scheduler.step()
    return grad_norm, skipped
