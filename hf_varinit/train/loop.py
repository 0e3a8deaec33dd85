"""Pretrain a GPT-2 or Llama from scratch with Accelerate and record per-layer Q/K/V weight statistics.

Usage:
    # one process (CPU or one GPU)
    hf-varinit pretrain --config gpt2-12l-tiny --output-dir runs/tiny
    # the same through accelerate (2 CPU processes with gloo, or GPUs)
    accelerate launch --multi_gpu --num_processes 2 -m hf_varinit pretrain --config gpt2-12l-tiny
    # FSDP2 on GPUs: statistics from the shards, sharded checkpoints, final/ from the gathered full weights
    accelerate launch --use_fsdp --fsdp_version 2 --fsdp_auto_wrap_policy TRANSFORMER_BASED_WRAP \
        --num_processes 8 -m hf_varinit pretrain --config gpt2-small --compile
    # continue after an interruption from the newest complete checkpoint
    hf-varinit pretrain --config gpt2-12l-tiny --output-dir runs/tiny --resume
    # continue a finished run to more steps (the warmup + cosine schedule is rebuilt over the new max_steps)
    hf-varinit pretrain --config gpt2-12l-tiny --output-dir runs/tiny --resume --max-steps 600

`run_pretrain` reads top to bottom: build the parts (`hf_varinit.train.build`), start or resume the `RunState`,
then for every optimizer step `train_step`, record, `evaluate` when due, `log_metrics` (one ``accelerator.log``
call) and `save_checkpoint` when due (and at the last step); at the end, the statistics and ``final/``.

Ctrl-C (SIGINT) or SIGTERM stops the run after the current optimizer step with a complete checkpoint and the
statistics, and prints the command that continues it (`hf_varinit.train.interrupt`); the command exits with 130
or 143.

Outputs in ``output_dir``: ``variance.safetensors`` (the records), ``metrics.jsonl`` (one JSON per log line),
``checkpoints/step_N/`` (complete Accelerate states), ``final/`` (``save_pretrained`` + tokenizer).

``batch_size`` is global: each micro-batch of ``batch_size`` sequences is split over the processes, so a
run gives the same data order, and within float tolerance the same weights, on any number of processes.
"""

from __future__ import annotations

import math
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NoReturn

import numpy as np
import torch
import torch.nn.functional as F
from accelerate import Accelerator
from accelerate.utils import set_seed
from tqdm.auto import tqdm
from transformers import get_scheduler

from hf_varinit.arch.keys import parse_layer_key
from hf_varinit.errors import ConfigError, NonFiniteLossError
from hf_varinit.init.patch import from_config
from hf_varinit.init.rules import get_rule
from hf_varinit.record.recorder import VarianceRecorder
from hf_varinit.record.stats_file import library_versions
from hf_varinit.report.next_model import spec_recipe_note
from hf_varinit.report.steady_state import SCHEDULER_NAMES
from hf_varinit.train.build import (
    EpochSampler,
    build_model_config,
    build_optimizer,
    check_output_dir,
    get_dataloaders,
    load_data,
    make_accelerator,
    prepare_model,
    reset_accelerate_state,
)
from hf_varinit.train.checkpoint import (
    CHECKPOINTS,
    COMPLETE,
    RunState,
    complete_checkpoints,
    find_latest_checkpoint,
    load_checkpoint,
    save_checkpoint,
    save_outputs,
)
from hf_varinit.train.console import print_summary, quiet_console, tqdm_disabled_by_env
from hf_varinit.train.faults import FaultGuard
from hf_varinit.train.interrupt import StopSignals, continue_command, invoked_command, signal_name
from hf_varinit.train.metrics import MetricsFile, Throughput, finite_or_none
from hf_varinit.train.precision import enable_cpu_fp16, optimizer_step
from hf_varinit.train.run_config import PretrainOptions, command_line

METRICS = "metrics.jsonl"
STATS = "variance.safetensors"


@dataclass
class TrainResult:
    """What a pretraining run produced."""

    output_dir: Path
    stats_path: Path
    metrics_path: Path
    final_dir: Path
    step: int
    tokens: int
    eval_loss: float | None
    eval_ppl: float | None
    nonfinite_skips: int
    wall_s: float
    resumed_from: Path | None = None
    stopped_by: int | None = None  # the signal that stopped the run early (``final_dir`` is then not written)
    compile_s: float | None = None  # with --compile: the first step's wall time (compilation), left out of tokens/s

    @property
    def exit_code(self) -> int:
        """0 for a finished run; 128 + the signal number for a stopped one (130 SIGINT, 143 SIGTERM)."""
        return 0 if self.stopped_by is None else 128 + self.stopped_by


@dataclass
class StepOutcome:
    """One optimizer step: its mean loss over the processes and micro-batches, and the gradient norm if measured."""

    loss: float
    grad_norm: float | None
    micro_batches: int


def run_pretrain(options: PretrainOptions, *, command: str | list[str] | None = None,
                 handle_signals: bool = True) -> TrainResult:
    """Build the data and model, train, record, checkpoint, evaluate and save (see the module docstring).

    The ``hf-varinit pretrain`` command calls this; so can a script or a notebook. While it runs, SIGINT and
    SIGTERM stop it after the current step with a checkpoint (``result.stopped_by`` is the signal); the previous
    signal handlers are restored afterwards.

    Args:
        options (`PretrainOptions`): e.g. ``parse_options(["--config", "gpt2-tiny-test"])``.
        command (`str` or `list[str]`, *optional*): the command that started the run, for the ``continue with:``
            line of a stopped run; default: this process's ``pretrain`` command line, else `command_line(options)`.
        handle_signals (`bool`): False leaves SIGINT / SIGTERM to the caller (a pilot run inside a larger job).

    Raises:
        `ConfigError`: unusable options or output folder, or ``--resume`` without a matching checkpoint.
        `NonFiniteLossError`: a NaN/inf loss with ``--on-nonfinite error`` (the statistics so far are kept).
        `WriteError`: a checkpoint, the statistics file or ``final/`` could not be written (a full disk, an I/O
            error); what was there before is intact, and ``--resume`` continues once the cause is fixed.
        `LostRankError`: another process died or did not answer within ``--collective-timeout`` seconds.
    """
    t0 = time.perf_counter()
    t = options.training
    get_rule(t.init)  # a bad init spec fails before any file is written
    output_dir = check_output_dir(t.output_dir)
    if t.resume and find_latest_checkpoint(output_dir) is None:
        raise ConfigError(f"--resume: no complete checkpoint in {output_dir / CHECKPOINTS} (folders without a "
                          f"{COMPLETE} marker are ignored); run without --resume to start from scratch")
    if not t.resume and complete_checkpoints(output_dir):
        raise ConfigError(f"output_dir {str(output_dir)!r} already holds checkpoints of a run; pass --resume to "
                          f"continue it or choose another --output-dir")
    command = command or invoked_command("pretrain") or command_line(options)
    metrics = MetricsFile(output_dir / METRICS)
    with StopSignals(enabled=handle_signals) as stop, quiet_console(disable_progress_bars=_no_progress_bars(options)):
        accelerator = enable_cpu_fp16(make_accelerator(t, output_dir, metrics))  # fp16 on CPU: autocast + scaler
        try:
            with FaultGuard(accelerator, t.collective_timeout, output_dir) as guard:  # lost ranks, disk errors
                return _train(accelerator, options, output_dir, metrics, t0, stop, command, guard)
        finally:
            accelerator.end_training()
            reset_accelerate_state()  # lets the next in-process run pick its own mixed precision


def _no_progress_bars(options: PretrainOptions) -> bool:
    return options.training.disable_tqdm or tqdm_disabled_by_env()


def _train(accelerator: Accelerator, options: PretrainOptions, output_dir: Path, metrics: MetricsFile,
           t0: float, stop: StopSignals, command: str | list[str], guard: FaultGuard) -> TrainResult:
    t = options.training
    main = accelerator.is_main_process
    set_seed(t.seed)
    with accelerator.main_process_first():  # the main process trains (and caches) the tokenizer first
        data = load_data(options)
    model = from_config(build_model_config(options.model, data.tokenizer), rule=t.init, seed=t.seed)
    note = spec_recipe_note(t.init, t.optimizer, t.lr)
    if note and main:
        print(f"note: {note}", flush=True)
    recorder = VarianceRecorder(model, every=t.record_every, rule=t.init)
    optimizer = build_optimizer(t, model)
    scheduler = get_scheduler(SCHEDULER_NAMES[t.lr_schedule], optimizer, num_warmup_steps=t.warmup_steps,
                              num_training_steps=t.max_steps)
    train_dl, eval_dl, sampler = get_dataloaders(accelerator, options, data)
    model, optimizer, scheduler = prepare_model(accelerator, model, optimizer, scheduler, t.compile)
    recorder.rebind(model)  # the parameters the run trains (sharded ones under FSDP2), roles from the model built
    records_here = main or recorder.collective  # sharded weights: every rank joins the record's collective
    metadata = stats_metadata(options, data.source, accelerator.num_processes)
    state, resumed = start_state(accelerator, output_dir, recorder, metrics, options)
    guard.state = state  # a lost rank's message names the step
    accelerator.init_trackers("hf_varinit", config={f"{g}.{k}": v for g, d in options.to_dict().items()
                                                     for k, v in d.items() if v is not None})
    tracking = t.report_to != "none"
    if tracking and main and resumed is None:  # the init's record (step 0) goes to the tracker too
        accelerator.log(qkv_variances(recorder), step=0)
    tokens_per_micro = t.batch_size * options.model.block_size
    batches = micro_batches(accelerator, train_dl, sampler, state)
    evaluation, speed, saved, compile_s = None, Throughput(), None, None
    bar = tqdm(total=t.max_steps, initial=state.step, desc="pretrain",
               disable=not accelerator.is_local_main_process or _no_progress_bars(options))
    model.train()
    try:
        while state.step < t.max_steps:
            if stop.requested(accelerator):  # every rank asks after the same step, and gets the same answer
                break
            started = time.perf_counter()
            step = train_step(accelerator, model, optimizer, scheduler, batches, options, state)
            if t.compile and compile_s is None:  # the first step compiles: its time is not a step time
                compile_s, speed = time.perf_counter() - started, Throughput()
            if not math.isfinite(step.loss):
                if t.on_nonfinite == "error":
                    stop_on_nonfinite(accelerator, output_dir, recorder, metadata, state, step.loss)
                state.nonfinite_skips += 1
            state.step += 1
            state.tokens += step.micro_batches * tokens_per_micro
            speed.add(step.micro_batches * tokens_per_micro)
            if state.position == len(train_dl):
                state.epoch, state.position = state.epoch + 1, 0
            bar.update(1)
            recorded = state.step % t.record_every == 0
            if recorded and records_here:
                recorder.record(state.step)
            final = state.step >= t.max_steps
            evaluated = final or bool(t.eval_every and state.step % t.eval_every == 0)
            if evaluated:
                evaluation = evaluate(accelerator, model, eval_dl, t.eval_batches)
            variances = qkv_variances(recorder) if recorded and tracking and main else None
            if state.step % t.log_every == 0 or evaluated:
                log_metrics(accelerator, bar, state, step, scheduler.get_last_lr()[0], speed.rate(),
                            evaluation if evaluated else None, variances)
            elif variances:  # a record step between metrics lines: the variances alone (metrics.jsonl skips them)
                accelerator.log(variances, step=state.step)
            if t.checkpoint_every and (state.step % t.checkpoint_every == 0 or final):
                saved = save_checkpoint(accelerator, output_dir, state, recorder, data.tokenizer, metadata,
                                        t.keep_last)
    finally:
        bar.close()
    if stop.signum is not None:
        saved = saved or resumed
        if saved is None or saved.name != f"step_{state.step}":  # this step has no checkpoint yet
            saved = save_checkpoint(accelerator, output_dir, state, recorder, data.tokenizer, metadata, t.keep_last)
        if main:
            recorder.save(output_dir, metadata)
            print(f"\n{signal_name(stop.signum)}: statistics in {output_dir / STATS}, checkpoint {saved}")
            print(f"stopped at step {state.step}; continue with: {continue_command(command)}", flush=True)
        return TrainResult(output_dir=output_dir, stats_path=output_dir / STATS, metrics_path=metrics.path,
                           final_dir=output_dir / "final", step=state.step, tokens=state.tokens, eval_loss=None,
                           eval_ppl=None, nonfinite_skips=state.nonfinite_skips, wall_s=time.perf_counter() - t0,
                           resumed_from=resumed, stopped_by=stop.signum)
    if evaluation is None:  # resumed at the final step: nothing trained, still report the eval
        evaluation = evaluate(accelerator, model, eval_dl, t.eval_batches)
    if records_here:
        recorder.record(state.step)
    final_dir = save_outputs(accelerator, output_dir, model, recorder, data.tokenizer, {
        **metadata, "final_step": state.step, "eval_loss": finite_or_none(evaluation[0]), "tokens": state.tokens,
        "compile_s": compile_s}, state.tokens)
    eval_loss, eval_ppl = evaluation
    result = TrainResult(output_dir=output_dir, stats_path=output_dir / STATS, metrics_path=metrics.path,
                         final_dir=final_dir, step=state.step, tokens=state.tokens, eval_loss=eval_loss,
                         eval_ppl=eval_ppl, nonfinite_skips=state.nonfinite_skips, wall_s=time.perf_counter() - t0,
                         resumed_from=resumed, compile_s=compile_s)
    if main:
        print_summary(recorder, result, saved.parent if saved else None)
    return result


# ----------------------------------------------------------------------------- the steps


def start_state(accelerator: Accelerator, output_dir: Path, recorder: VarianceRecorder, metrics: MetricsFile,
                options: PretrainOptions) -> tuple[RunState, Path | None]:
    """A new `RunState` (the init recorded as step 0), or the newest checkpoint's with everything it restores.

    Returns:
        The state and the checkpoint folder resumed from (None for a new run).
    """
    folder = None
    if options.training.resume:
        folder, state = load_checkpoint(accelerator, output_dir, recorder, options.to_dict())
        if accelerator.is_main_process:
            print(f"resuming from step {state.step} (checkpoint {folder})")
            saved_max = state.options.get("training", {}).get("max_steps")
            if saved_max is not None and saved_max != options.training.max_steps:
                print(f"max_steps {saved_max} -> {options.training.max_steps}: the warmup + cosine schedule is "
                      f"rebuilt over {options.training.max_steps} steps and continues at step {state.step}")
    else:
        state = RunState()
        if accelerator.is_main_process or recorder.collective:  # a collective when sharded
            recorder.record(0)  # the init, before any update
    state.world_size, state.options = accelerator.num_processes, options.to_dict()
    if accelerator.is_main_process:
        metrics.restart(state.step)  # a resumed run rewrites what followed its checkpoint
    return state, folder


def micro_batches(accelerator: Accelerator, train_dl, sampler: EpochSampler, state: RunState) -> Iterator[torch.Tensor]:
    """The train micro-batches from where ``state`` stands, epoch after epoch; counts ``state.position``.

    The caller starts the next epoch (``state.epoch``, ``state.position = 0``) once the last batch is trained on.
    """
    while True:
        sampler.epoch = state.epoch
        loader = accelerator.skip_first_batches(train_dl, state.position) if state.position else train_dl
        for ids in loader:  # (B, T) token ids; B = batch_size / processes
            state.position += 1
            yield ids


def train_step(accelerator: Accelerator, model, optimizer, scheduler, batches: Iterator[torch.Tensor],
               options: PretrainOptions, state: RunState) -> StepOutcome:
    """One optimizer step: forward and backward over ``grad_accum`` micro-batches, then clip, step and schedule.

    A NaN/inf loss, or an inf/NaN gradient under the fp16 grad scaler (counted in ``state.scaler_skips``), leaves the
    weights and the schedule as they were (`precision.optimizer_step`). The gradient norm is measured when clipping,
    and on the steps that write a metrics line.
    """
    t = options.training
    window, micro = torch.zeros((), device=accelerator.device), 0
    for ids in batches:
        with accelerator.accumulate(model):
            loss = model(input_ids=ids, labels=ids, use_cache=False).loss  # no KV cache to build in training
            accelerator.backward(loss)
            window += loss.detach().float()
            micro += 1
        if accelerator.sync_gradients:
            break
    step_loss = (accelerator.reduce(window, "mean") / micro).item()
    grad_norm = None
    if math.isfinite(step_loss):  # clip, step; a step the fp16 grad scaler skips leaves the schedule as it was
        grad_norm, skipped = optimizer_step(accelerator, model, optimizer, scheduler, t.grad_clip,
                                            measure_norm=(state.step + 1) % t.log_every == 0)
        state.scaler_skips += int(skipped)
    optimizer.zero_grad(set_to_none=True)
    return StepOutcome(step_loss, None if grad_norm is None else float(grad_norm), micro)


@torch.no_grad()
def evaluate(accelerator: Accelerator, model, eval_dl, max_batches: int | None) -> tuple[float, float]:
    """Mean token loss and perplexity over (the first ``max_batches`` of) the validation blocks."""
    model.eval()
    losses = []
    for i, ids in enumerate(eval_dl):
        if max_batches is not None and i >= max_batches:
            break
        logits = model(input_ids=ids, use_cache=False).logits  # (B, T, V)
        per_token = F.cross_entropy(logits[:, :-1].flatten(0, 1).float(), ids[:, 1:].flatten(), reduction="none")
        losses.append(accelerator.gather_for_metrics(per_token.view(ids.shape[0], -1).mean(1)))
    model.train()
    loss = torch.cat(losses).mean().item()
    return loss, math.exp(min(loss, 700.0))


def log_metrics(accelerator: Accelerator, bar, state: RunState, step: StepOutcome, lr: float, tokens_per_s: float,
                evaluation: tuple[float, float] | None, variances: dict[str, float] | None = None) -> None:
    """One metrics line to every tracker (``metrics.jsonl`` always; TensorBoard / Trackio / W&B with --report-to).

    ``variances`` (``variance/layers.0.q`` -> value, on record steps with a tracker) go out in the same call;
    ``metrics.jsonl`` leaves them to ``variance.safetensors``.
    """
    line = {"loss": step.loss, "lr": lr, "grad_norm": step.grad_norm, "tokens": state.tokens,
            "tokens_per_s": tokens_per_s, "nonfinite_skips": state.nonfinite_skips, "scaler_skips": state.scaler_skips}
    if evaluation is not None:
        line.update(eval_loss=evaluation[0], eval_ppl=evaluation[1])
    line.update(variances or {})
    bar.set_postfix(loss=f"{step.loss:.3f}", **({"eval": f"{evaluation[0]:.3f}"} if evaluation else {}))
    accelerator.log({k: v for k, v in line.items() if v is not None}, step=state.step)


def qkv_variances(recorder: VarianceRecorder) -> dict[str, float]:
    """The latest record's Q/K/V weight variance per layer, as tracker scalars ``variance/layers.N.q|k|v``."""
    arrays = recorder.arrays()
    return {f"variance/{key}": float(arrays["var"][-1, j]) for j, key in enumerate(recorder.keys)
            if parse_layer_key(key)[1] in ("q", "k", "v")}


def stop_on_nonfinite(accelerator: Accelerator, output_dir: Path, recorder: VarianceRecorder, metadata: dict,
                      state: RunState, loss: float) -> NoReturn:
    """Save the statistics up to the last finite record and raise `NonFiniteLossError` naming the step."""
    kept = None
    if accelerator.is_main_process:
        recorder.truncate(state.step)
        _drop_nonfinite_records(recorder)
        recorder.save(output_dir, {**metadata, "stopped": "non-finite loss"})
        kept = recorder.steps[-1] if recorder.steps else None
    last = find_latest_checkpoint(output_dir)
    raise NonFiniteLossError(
        f"non-finite loss ({loss}) at step {state.step + 1}; statistics up to step {kept} kept in "
        f"{output_dir / STATS}{', last complete checkpoint ' + str(last) if last else ''}; "
        f"lower --lr, raise --warmup-steps, or pass --on-nonfinite skip"
    )


def _drop_nonfinite_records(recorder: VarianceRecorder) -> None:
    """Drop trailing records holding NaN or inf (the stats kept end at the last good record)."""
    arrays = recorder.arrays()
    bad = ~np.isfinite(arrays["var"]).all(1) | ~np.isfinite(arrays["mean"]).all(1)
    if bad.any():
        first_bad = int(np.argmax(bad))
        recorder.truncate(int(arrays["step"][first_bad - 1]) if first_bad else -1)


def stats_metadata(options: PretrainOptions, dataset: str, world_size: int) -> dict[str, Any]:
    """What ``variance.safetensors`` says about the run that recorded it (with the command that regenerates it)."""
    t = options.training
    return {"seed": t.seed, "optimizer": t.optimizer, "lr": t.lr, "momentum": t.momentum,
            "weight_decay": t.weight_decay, "warmup_steps": t.warmup_steps, "lr_schedule": t.lr_schedule,
            "batch_size": t.batch_size,
            "grad_accum": t.grad_accum, "sequences_per_step": t.batch_size * t.grad_accum,
            "block_size": options.model.block_size, "mixed_precision": t.mixed_precision, "max_steps": t.max_steps,
            "dataset": dataset, "versions": library_versions(), "world_size": world_size, "source": "training",
            "command": command_line(options)}


__all__ = ["TrainResult", "evaluate", "run_pretrain", "train_step"]
