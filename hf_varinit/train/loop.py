"""Pretrain a GPT-2 or Llama from scratch with Accelerate and record per-layer Q/K/V weight statistics.

Usage:
    # one process (CPU or one GPU)
    python scripts/pretrain.py --config configs/gpt2-12l-tiny.yaml --output-dir runs/tiny
    # the same through accelerate (2 CPU processes with gloo, or GPUs)
    accelerate launch --multi_gpu --num_processes 2 scripts/pretrain.py --config configs/gpt2-12l-tiny.yaml
    # the library CLI runs the same code path
    hf-varinit pretrain --config configs/gpt2-12l-tiny.yaml --max-steps 100 --init kaiming
    # continue after an interruption from the newest complete checkpoint
    python scripts/pretrain.py --config configs/gpt2-12l-tiny.yaml --output-dir runs/tiny --resume

Outputs in ``output_dir``: ``variance.safetensors`` (the records), ``metrics.jsonl`` (one JSON per log line),
``checkpoints/step_N/`` (complete Accelerate states), ``final/`` (``save_pretrained`` + tokenizer).

``batch_size`` is global: each micro-batch of ``batch_size`` sequences is split over the processes, so a
run gives the same data order, and within float tolerance the same weights, on any number of processes.
"""

from __future__ import annotations

import json
import math
import os
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from accelerate import Accelerator
from accelerate.state import AcceleratorState, GradientState
from accelerate.utils import DataLoaderConfiguration, DistributedType, set_seed
from torch.utils.data import DataLoader, Sampler
from tqdm.auto import tqdm

from hf_varinit.errors import ConfigError, DataError, HFVarInitError, NonFiniteLossError
from hf_varinit.record.recorder import VarianceRecorder
from hf_varinit.train import checkpoint as ckpt
from hf_varinit.train.options import (  # noqa: F401  (re-exported: the CLI and tests import them from here)
    DataOptions,
    ModelOptions,
    PretrainOptions,
    TrainingOptions,
    add_pretrain_arguments,
    options_from_namespace,
    parse_options,
)

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


class EpochSampler(Sampler[int]):
    """A permutation of ``range(n)`` seeded by ``(seed, epoch)``: the same order whenever an epoch is replayed.

    The epoch is a plain attribute (no ``set_epoch``), so Accelerate's epoch bookkeeping never changes it.
    """

    def __init__(self, n: int, seed: int):
        self.n, self.seed, self.epoch = n, seed, 0

    def __len__(self) -> int:
        return self.n

    def __iter__(self):
        g = torch.Generator().manual_seed(self.seed * 1_000_003 + self.epoch)
        return iter(torch.randperm(self.n, generator=g).tolist())


# ----------------------------------------------------------------------------- setup


def check_output_dir(output_dir: str | os.PathLike) -> Path:
    """Create ``output_dir`` and prove it writable, before any work."""
    out = Path(output_dir)
    try:
        out.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=out, prefix=".write_test_"):
            pass
    except OSError as e:
        reason = e.strerror or e
        raise ConfigError(f"output_dir {str(out)!r} is not writable ({reason}); choose another --output-dir") from e
    return out


def build_model_config(options: ModelOptions, tokenizer):
    """A `transformers` GPT2Config / LlamaConfig from the options (vocabulary and special ids from the tokenizer)."""
    from transformers import GPT2Config, LlamaConfig

    vocab_size = len(tokenizer)
    special = {"bos_token_id": tokenizer.bos_token_id, "eos_token_id": tokenizer.eos_token_id}
    positions = options.n_positions or options.block_size
    if options.block_size > positions:
        raise ConfigError(f"block_size={options.block_size} > n_positions={positions}; lower --block-size")
    if options.model_type == "gpt2":
        return GPT2Config(
            vocab_size=vocab_size, n_positions=positions, n_embd=options.n_embd, n_layer=options.n_layer,
            n_head=options.n_head, n_inner=options.intermediate_size, resid_pdrop=options.dropout,
            embd_pdrop=options.dropout, attn_pdrop=options.dropout, **special,
        )
    extra = {"intermediate_size": options.intermediate_size} if options.intermediate_size else {}
    return LlamaConfig(
        vocab_size=vocab_size, hidden_size=options.n_embd, num_hidden_layers=options.n_layer,
        num_attention_heads=options.n_head, num_key_value_heads=options.n_kv_heads or options.n_head,
        max_position_embeddings=positions, attention_dropout=options.dropout, tie_word_embeddings=False,
        **special, **extra,
    )


def load_data(options: PretrainOptions):
    from hf_varinit.train.data import build_lm_datasets

    return build_lm_datasets(
        options.data.source, block_size=options.model.block_size, tokenizer_name=options.data.tokenizer,
        vocab_size=options.model.vocab_size, max_chars=options.data.max_chars,
        validation_fraction=options.data.validation_fraction, seed=options.training.seed,
        cache_dir=options.data.resolved_cache_dir(), text_column=options.data.text_column,
    )


def get_dataloaders(accelerator: Accelerator, options: PretrainOptions, data) -> tuple[DataLoader, DataLoader]:
    """Prepared train (seeded epoch shuffle, full batches only) and validation dataloaders.

    Both loaders own a seeded generator, so creating an iterator never draws from the global RNG (which
    drives dropout and is restored on resume).
    """
    t = options.training
    if t.batch_size % accelerator.num_processes:
        raise ConfigError(f"batch_size={t.batch_size} (global) must be divisible by the {accelerator.num_processes} "
                          f"processes")
    train_ids = data.train[:]["input_ids"]  # (N, block_size) int64
    valid_ids = data.validation[:]["input_ids"]
    if len(train_ids) < t.batch_size:
        raise DataError(f"the train split has {len(train_ids)} blocks, fewer than batch_size={t.batch_size}; "
                        f"raise max_chars or lower --batch-size / --block-size")
    train_dl = DataLoader(train_ids, batch_size=t.batch_size, sampler=EpochSampler(len(train_ids), t.seed),
                          drop_last=True, generator=torch.Generator().manual_seed(t.seed))
    eval_dl = DataLoader(valid_ids, batch_size=t.batch_size, shuffle=False,
                         generator=torch.Generator().manual_seed(t.seed))
    return accelerator.prepare(train_dl, eval_dl)


def build_optimizer(options: TrainingOptions, model: torch.nn.Module) -> torch.optim.Optimizer:
    decay = [p for p in model.parameters() if p.requires_grad and p.dim() >= 2]
    no_decay = [p for p in model.parameters() if p.requires_grad and p.dim() < 2]
    groups = [{"params": decay, "weight_decay": options.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    if options.optimizer == "sgd":
        return torch.optim.SGD(groups, lr=options.lr, momentum=options.momentum, foreach=True)
    # fused: one kernel over all parameters (CPU and CUDA); the per-tensor loop is torch's CPU default
    return torch.optim.AdamW(groups, lr=options.lr, betas=(0.9, 0.95), fused=True)


@torch.no_grad()
def evaluate(accelerator: Accelerator, model, eval_dl, max_batches: int | None) -> tuple[float, float]:
    """Mean token loss and perplexity over (the first ``max_batches`` of) the validation blocks."""
    model.eval()
    losses = []
    for i, ids in enumerate(eval_dl):
        if max_batches is not None and i >= max_batches:
            break
        logits = model(input_ids=ids).logits  # (B, T, V)
        per_token = F.cross_entropy(logits[:, :-1].flatten(0, 1).float(), ids[:, 1:].flatten(), reduction="none")
        losses.append(accelerator.gather_for_metrics(per_token.view(ids.shape[0], -1).mean(1)))
    model.train()
    loss = torch.cat(losses).mean().item()
    return loss, math.exp(min(loss, 700.0))


def _versions() -> dict[str, str]:
    import accelerate
    import transformers

    from hf_varinit import __version__

    return {"torch": torch.__version__, "transformers": transformers.__version__,
            "accelerate": accelerate.__version__, "hf_varinit": __version__}


def _multi_process_without_accelerator() -> bool:
    """Several launched processes on a machine with no GPU (or other accelerator): force gloo on CPU.

    Accelerate picks MULTI_CPU only when told ``cpu=True``; ``accelerate launch --multi_gpu`` on a CPU-only
    machine would otherwise give independent single processes all writing the same files.
    """
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        return False
    from accelerate.utils import is_mlu_available, is_npu_available, is_xpu_available

    mps = getattr(torch.backends, "mps", None)
    return not (torch.cuda.is_available() or is_xpu_available() or is_npu_available() or is_mlu_available()
                or (mps is not None and mps.is_available()))


def _check_tracker(report_to: str) -> str | None:
    if report_to == "none":
        return None
    from accelerate.utils import imports

    available = {"tensorboard": imports.is_tensorboard_available, "wandb": imports.is_wandb_available,
                 "trackio": getattr(imports, "is_trackio_available", lambda: False)}[report_to]
    if not available():
        raise ConfigError(f"report_to={report_to!r} but {report_to} is not installed; `pip install {report_to}` "
                          f"or use --report-to none (metrics.jsonl is always written)")
    return report_to


# ----------------------------------------------------------------------------- the loop


# Options a resumed run may change; any other difference would make it a different run.
RESUMABLE_CHANGES = frozenset({"output_dir", "resume", "eval_every", "eval_batches", "log_every", "report_to",
                               "checkpoint_every", "keep_last", "cache_dir", "on_nonfinite"})


class _Run:
    """Mutable training state of one run (what trainer_state.json holds)."""

    def __init__(self):
        self.step = 0
        self.tokens = 0
        self.epoch = 0
        self.position = 0  # micro-batches consumed in the current epoch
        self.nonfinite_skips = 0
        self.scaler_skips = 0  # fp16 steps the grad scaler skipped

    def state(self, options: PretrainOptions, world_size: int) -> dict[str, Any]:
        t = options.training
        return {"step": self.step, "tokens": self.tokens, "epoch": self.epoch, "position": self.position,
                "nonfinite_skips": self.nonfinite_skips, "scaler_skips": self.scaler_skips,
                "seed": t.seed, "batch_size": t.batch_size,
                "grad_accum": t.grad_accum, "world_size": world_size, "options": options.to_dict()}


def _stats_metadata(options: PretrainOptions, data, world_size: int) -> dict[str, Any]:
    t = options.training
    return {"seed": t.seed, "optimizer": t.optimizer, "lr": t.lr, "momentum": t.momentum,
            "weight_decay": t.weight_decay, "warmup_steps": t.warmup_steps, "batch_size": t.batch_size,
            "grad_accum": t.grad_accum, "sequences_per_step": t.batch_size * t.grad_accum,
            "block_size": options.model.block_size, "mixed_precision": t.mixed_precision, "max_steps": t.max_steps,
            "dataset": data.source, "versions": _versions(), "world_size": world_size, "source": "training"}


def _finite_or_none(value):
    return None if isinstance(value, float) and not math.isfinite(value) else value


def _finite_prefix(recorder: VarianceRecorder) -> None:
    """Drop trailing records holding NaN or inf (the stats kept end at the last good record)."""
    arrays = recorder.arrays()
    bad = ~np.isfinite(arrays["var"]).all(1) | ~np.isfinite(arrays["mean"]).all(1)
    if bad.any():
        first_bad = int(np.argmax(bad))
        recorder.truncate(int(arrays["step"][first_bad - 1]) if first_bad else -1)


def _rewrite_metrics(path: Path, max_step: int) -> None:
    """Keep only the metric lines up to ``max_step`` (a resumed run rewrites what followed its checkpoint)."""
    if not path.is_file():
        return
    from hf_varinit.io_utils import atomic_write_text

    kept = [line for line in path.read_text(encoding="utf-8").splitlines()
            if line.strip() and json.loads(line).get("step", 0) <= max_step]
    atomic_write_text(path, "".join(line + "\n" for line in kept))


def _resume(accelerator: Accelerator, output_dir: Path, recorder: VarianceRecorder, options: PretrainOptions,
            run: _Run) -> Path:
    expected = {name: value for group in options.to_dict().values() for name, value in group.items()
                if name not in RESUMABLE_CHANGES}
    expected["world_size"] = accelerator.num_processes
    folder, state = ckpt.load_checkpoint(accelerator, output_dir, recorder, expected)
    run.step, run.tokens = int(state["step"]), int(state["tokens"])
    run.epoch, run.position = int(state["epoch"]), int(state["position"])
    run.nonfinite_skips = int(state.get("nonfinite_skips", 0))
    run.scaler_skips = int(state.get("scaler_skips", 0))
    return folder


def training_function(options: PretrainOptions) -> TrainResult:
    """Build the data and model, train, record, checkpoint, evaluate and save. See the module docstring."""
    t = options.training
    t0 = time.perf_counter()
    output_dir = check_output_dir(t.output_dir)
    if t.resume and ckpt.find_latest_checkpoint(output_dir) is None:
        raise ConfigError(f"--resume: no complete checkpoint in {output_dir / ckpt.CHECKPOINTS} (folders without a "
                          f"{ckpt.COMPLETE} marker are ignored); run without --resume to start from scratch")
    if not t.resume and ckpt.complete_checkpoints(output_dir):
        raise ConfigError(f"output_dir {str(output_dir)!r} already holds checkpoints of a run; pass --resume to "
                          f"continue it or choose another --output-dir")
    tracker = _check_tracker(t.report_to)
    AcceleratorState._reset_state()  # an earlier in-process Accelerator (a Trainer, say) must not fix our precision
    GradientState._reset_state()
    accelerator = Accelerator(
        cpu=_multi_process_without_accelerator(), mixed_precision=t.mixed_precision,
        gradient_accumulation_steps=t.grad_accum, log_with=tracker,
        project_dir=str(output_dir), dataloader_config=DataLoaderConfiguration(split_batches=True),
    )
    try:
        return _train(accelerator, options, output_dir, t0)
    finally:
        accelerator.end_training()
        AcceleratorState._reset_state()  # lets the next in-process run pick its own mixed precision
        GradientState._reset_state()


def _train(accelerator: Accelerator, options: PretrainOptions, output_dir: Path, t0: float) -> TrainResult:
    from hf_varinit.init.patch import from_config

    t = options.training
    main = accelerator.is_main_process
    set_seed(t.seed)
    with accelerator.main_process_first():  # the main process trains (and caches) the tokenizer first
        data = load_data(options)
    config = build_model_config(options.model, data.tokenizer)
    model = from_config(config, rule=t.init, seed=t.seed)
    recorder = VarianceRecorder(model, every=t.record_every, rule=t.init)
    optimizer = build_optimizer(t, model)
    from transformers import get_cosine_schedule_with_warmup

    scheduler = get_cosine_schedule_with_warmup(optimizer, t.warmup_steps, t.max_steps)
    train_dl, eval_dl = get_dataloaders(accelerator, options, data)
    if accelerator.distributed_type == DistributedType.FSDP:
        raise ConfigError("FSDP is not supported by this loop: the recorder would read pre-sharding parameters on the "
                          "main process only. Use DDP (--multi_gpu), or record with hf_varinit.record.sharded on all ranks "
                          "after fully_shard in your own loop")
    model, optimizer, scheduler = accelerator.prepare(model, optimizer, scheduler)
    sampler: EpochSampler = train_dl.base_dataloader.sampler if hasattr(train_dl, "base_dataloader") \
        else train_dl.sampler
    metadata = _stats_metadata(options, data, accelerator.num_processes)
    metrics_path, run, resumed = output_dir / METRICS, _Run(), None
    if t.resume:
        resumed = _resume(accelerator, output_dir, recorder, options, run)
        if main:
            _rewrite_metrics(metrics_path, run.step)
    elif main:
        metrics_path.unlink(missing_ok=True)
        recorder.record(0)  # the init, before any update
    if t.report_to != "none":
        accelerator.init_trackers("hf_varinit", config={f"{g}.{k}": v for g, d in options.to_dict().items()
                                                         for k, v in d.items() if v is not None})
    tokens_per_micro = t.batch_size * options.model.block_size
    params = [p for p in model.parameters() if p.requires_grad]
    window_loss, micro, eval_loss, eval_ppl = torch.zeros((), device=accelerator.device), 0, None, None
    log_tokens, log_time = 0, time.perf_counter()
    bar = tqdm(total=t.max_steps, initial=run.step, desc="pretrain", disable=not accelerator.is_local_main_process)
    model.train()
    try:
        while run.step < t.max_steps:
            sampler.epoch = run.epoch
            loader = accelerator.skip_first_batches(train_dl, run.position) if run.position else train_dl
            for ids in loader:
                run.position += 1
                with accelerator.accumulate(model):
                    loss = model(input_ids=ids, labels=ids).loss
                    accelerator.backward(loss)
                    window_loss += loss.detach().float()
                    micro += 1
                    if not accelerator.sync_gradients:
                        continue
                    step_loss = (accelerator.reduce(window_loss, "mean") / micro).item()
                    grad_norm = None
                    stepped = math.isfinite(step_loss)
                    if stepped:
                        if t.grad_clip:
                            grad_norm = accelerator.clip_grad_norm_(params, t.grad_clip)
                        elif (run.step + 1) % t.log_every == 0:
                            grad_norm = accelerator.clip_grad_norm_(params, float("inf"))
                        optimizer.step()
                        if accelerator.optimizer_step_was_skipped:  # fp16 grad scaler found inf/nan gradients
                            run.scaler_skips += 1
                    elif t.on_nonfinite == "skip":
                        run.nonfinite_skips += 1
                    else:
                        kept = None
                        if main:
                            recorder.truncate(run.step)
                            _finite_prefix(recorder)
                            recorder.save(output_dir, {**metadata, "stopped": "non-finite loss"})
                            kept = recorder.steps[-1] if recorder.steps else None
                        last = ckpt.find_latest_checkpoint(output_dir)
                        raise NonFiniteLossError(
                            f"non-finite loss ({step_loss}) at step {run.step + 1}; statistics up to step {kept} kept "
                            f"in {output_dir / STATS}{', last complete checkpoint ' + str(last) if last else ''}; "
                            f"lower --lr, raise --warmup-steps, or pass --on-nonfinite skip"
                        )
                    if stepped:  # a skipped step does not advance the schedule
                        scheduler.step()
                    optimizer.zero_grad(set_to_none=True)
                run.step += 1
                run.tokens += micro * tokens_per_micro
                log_tokens += micro * tokens_per_micro
                window_loss.zero_()
                micro = 0
                bar.update(1)
                if main:
                    recorder.maybe_record(run.step)
                final = run.step >= t.max_steps
                evaluated = (t.eval_every and run.step % t.eval_every == 0) or final
                if evaluated:
                    eval_loss, eval_ppl = evaluate(accelerator, model, eval_dl, t.eval_batches)
                if run.step % t.log_every == 0 or evaluated:
                    now = time.perf_counter()
                    line = {"step": run.step, "loss": step_loss, "lr": scheduler.get_last_lr()[0],
                            "grad_norm": None if grad_norm is None else float(grad_norm), "tokens": run.tokens,
                            "tokens_per_s": log_tokens / max(now - log_time, 1e-9),
                            "nonfinite_skips": run.nonfinite_skips,
                            "scaler_skips": run.scaler_skips}
                    if evaluated:
                        line.update(eval_loss=eval_loss, eval_ppl=eval_ppl)
                    log_tokens, log_time = 0, now
                    bar.set_postfix(loss=f"{step_loss:.3f}", **({"eval": f"{eval_loss:.3f}"} if evaluated else {}))
                    if main:
                        with metrics_path.open("a", encoding="utf-8") as fh:  # strict JSON: NaN/inf written as null
                            fh.write(json.dumps({k: _finite_or_none(v) for k, v in line.items()}) + "\n")
                    if accelerator.trackers:
                        accelerator.log({k: v for k, v in line.items() if v is not None and k != "step"}, step=run.step)
                if run.position == len(train_dl):
                    run.epoch, run.position = run.epoch + 1, 0
                if t.checkpoint_every and run.step % t.checkpoint_every == 0:
                    state = run.state(options, accelerator.num_processes)
                    ckpt.save_checkpoint(accelerator, output_dir, run.step, state, recorder, data.tokenizer, metadata,
                                         t.keep_last)
                if final:
                    break
    finally:
        bar.close()
    if eval_loss is None:  # resumed at the final step: nothing trained, still report the eval
        eval_loss, eval_ppl = evaluate(accelerator, model, eval_dl, t.eval_batches)
    final_dir = output_dir / "final"
    if main:
        recorder.record(run.step)
        meta = {**metadata, "final_step": run.step, "eval_loss": _finite_or_none(eval_loss), "tokens": run.tokens}
        recorder.save(output_dir, meta)
        ckpt.save_final(accelerator.unwrap_model(model), data.tokenizer, final_dir)
    accelerator.wait_for_everyone()
    result = TrainResult(output_dir, output_dir / STATS, metrics_path, final_dir, run.step, run.tokens, eval_loss,
                         eval_ppl, run.nonfinite_skips, time.perf_counter() - t0, resumed)
    if main:
        print_summary(recorder, result)
    return result


def print_summary(recorder: VarianceRecorder, result: TrainResult) -> None:
    """Per layer Q/K/V variance at the first and last record, and where every file is."""
    arrays, keys = recorder.arrays(), recorder.keys
    steps = arrays["step"]
    print(f"\nQ/K/V weight variance, step {steps[0]} -> step {steps[-1]}")
    print(f"{'layer':>5}  " + "  ".join(f"{r + ' init':>10} {r + ' end':>10}" for r in ("q", "k", "v")))
    for layer in range(recorder.metadata()["n_layer"] or 0):
        cells = []
        for role in ("q", "k", "v"):
            key = f"layers.{layer}.{role}"
            if key in keys:
                j = keys.index(key)
                cells.append(f"{arrays['var'][0, j]:>10.3e} {arrays['var'][-1, j]:>10.3e}")
        if cells:
            print(f"{layer:>5}  " + "  ".join(cells))
    ppl = f" (ppl {result.eval_ppl:.2f})" if result.eval_ppl is not None else ""
    print(f"\nstep {result.step}, {result.tokens} tokens, eval loss {result.eval_loss}{ppl}, {result.wall_s:.1f} s")
    print(f"statistics   {result.stats_path}\nmetrics      {result.metrics_path}\nfinal model  {result.final_dir}")
    print(f"checkpoints  {result.output_dir / ckpt.CHECKPOINTS}")


def run_pretrain(args: Any) -> TrainResult:
    """Run pretraining from `PretrainOptions` or an argparse namespace built with `add_pretrain_arguments`.

    The ``hf-varinit pretrain`` subcommand and ``scripts/pretrain.py`` both call this.
    """
    options = args if isinstance(args, PretrainOptions) else options_from_namespace(args)
    return training_function(options)


def main(argv: list[str] | None = None) -> int:
    """Entry point of ``scripts/pretrain.py``: 0 on success, 1 with a one-line message on an hf_varinit error."""
    try:
        run_pretrain(parse_options(argv))
    except HFVarInitError as e:
        print(f"pretrain: error: {type(e).__name__}: {e}", file=sys.stderr)
        return 1
    return 0


__all__ = ["TrainResult", "add_pretrain_arguments", "get_dataloaders", "main", "run_pretrain", "training_function"]
