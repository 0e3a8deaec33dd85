"""The parts a pretraining run is built from: the output folder, the Accelerator, the data and its loaders, the
model config and the optimizer (the ``get_dataloaders`` skeleton of Accelerate's examples).
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import torch
from accelerate import Accelerator
from accelerate.state import AcceleratorState, GradientState
from accelerate.tracking import GeneralTracker
from accelerate.utils import (
    DataLoaderConfiguration,
    DistributedType,
    is_mlu_available,
    is_npu_available,
    is_tensorboard_available,
    is_trackio_available,
    is_wandb_available,
    is_xpu_available,
)
from torch.utils.data import DataLoader, Sampler

from hf_varinit.arch import build_config
from hf_varinit.errors import ConfigError, DataError
from hf_varinit.train.data import LMData, build_lm_datasets
from hf_varinit.train.options import ModelOptions, PretrainOptions, TrainingOptions

_TRACKERS = {"tensorboard": is_tensorboard_available, "wandb": is_wandb_available, "trackio": is_trackio_available}


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


# ----------------------------------------------------------------------------- the Accelerator


def reset_accelerate_state() -> None:
    """Forget an earlier in-process Accelerator (a `Trainer`'s, say), so the next one picks its own precision.

    Accelerate keeps its state in process-wide singletons and (in 1.15) offers no public way to reset them; their
    private ``_reset_state`` is what Accelerate's own tests call between runs, so it is called here, and only here.
    """
    AcceleratorState._reset_state()
    GradientState._reset_state()


def _multi_process_without_accelerator() -> bool:
    """Several launched processes on a machine with no GPU (or other accelerator): force gloo on CPU.

    Accelerate picks MULTI_CPU only when told ``cpu=True``; ``accelerate launch --multi_gpu`` on a CPU-only
    machine would otherwise give independent single processes all writing the same files.
    """
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        return False
    mps = getattr(torch.backends, "mps", None)
    return not (torch.cuda.is_available() or is_xpu_available() or is_npu_available() or is_mlu_available()
                or (mps is not None and mps.is_available()))


def _check_tracker(report_to: str) -> list[str]:
    if report_to == "none":
        return []
    if not _TRACKERS[report_to]():
        raise ConfigError(f"report_to={report_to!r} but {report_to} is not installed; `pip install {report_to}` "
                          f"or use --report-to none (metrics.jsonl is always written)")
    return [report_to]


def make_accelerator(options: TrainingOptions, output_dir: Path, *trackers: GeneralTracker) -> Accelerator:
    """The run's `Accelerator`: precision, gradient accumulation, global batches split over the processes, and the
    trackers (``trackers`` and ``--report-to``). Refuses FSDP (the recorder reads the main process's parameters).
    """
    log_with = [*trackers, *_check_tracker(options.report_to)]
    reset_accelerate_state()  # an earlier in-process Accelerator (a Trainer, say) must not fix our precision
    accelerator = Accelerator(
        cpu=_multi_process_without_accelerator(), mixed_precision=options.mixed_precision,
        gradient_accumulation_steps=options.grad_accum, log_with=log_with or None, project_dir=str(output_dir),
        dataloader_config=DataLoaderConfiguration(split_batches=True),
    )
    if accelerator.distributed_type == DistributedType.FSDP:
        raise ConfigError("FSDP is not supported by this loop: the recorder would read pre-sharding parameters on the "
                          "main process only. Use DDP (--multi_gpu), or record with hf_varinit.record.moments on all "
                          "ranks after fully_shard in your own loop")
    return accelerator


# ----------------------------------------------------------------------------- data


def load_data(options: PretrainOptions) -> LMData:
    """The packed train and validation blocks and the tokenizer of ``options.data``."""
    return build_lm_datasets(
        options.data.source, block_size=options.model.block_size, tokenizer_name=options.data.tokenizer,
        vocab_size=options.model.vocab_size, max_chars=options.data.max_chars,
        validation_fraction=options.data.validation_fraction, seed=options.training.seed,
        cache_dir=options.data.resolved_cache_dir(), text_column=options.data.text_column,
    )


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


def get_dataloaders(accelerator: Accelerator, options: PretrainOptions, data: LMData
                    ) -> tuple[DataLoader, DataLoader, EpochSampler]:
    """Prepared train (seeded epoch shuffle, full batches only) and validation dataloaders, and the train sampler.

    Both loaders own a seeded generator, so creating an iterator never draws from the global RNG (which
    drives dropout and is restored on resume). Set the sampler's ``epoch`` before iterating an epoch.
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
    sampler = EpochSampler(len(train_ids), t.seed)
    train_dl = DataLoader(train_ids, batch_size=t.batch_size, sampler=sampler, drop_last=True,
                          generator=torch.Generator().manual_seed(t.seed))
    eval_dl = DataLoader(valid_ids, batch_size=t.batch_size, shuffle=False,
                         generator=torch.Generator().manual_seed(t.seed))
    train_dl, eval_dl = accelerator.prepare(train_dl, eval_dl)
    return train_dl, eval_dl, sampler


# ----------------------------------------------------------------------------- model and optimizer


def build_model_config(options: ModelOptions, tokenizer):
    """A `transformers` GPT2Config / LlamaConfig from the options (vocabulary and special ids from the tokenizer)."""
    positions = options.n_positions or options.block_size
    if options.block_size > positions:
        raise ConfigError(f"block_size={options.block_size} > n_positions={positions}; lower --block-size")
    return build_config(
        options.model_type, n_layer=options.n_layer, n_embd=options.n_embd, n_head=options.n_head,
        n_kv_heads=options.n_kv_heads, intermediate_size=options.intermediate_size, vocab_size=len(tokenizer),
        n_positions=positions, dropout=options.dropout, bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
    )


def build_optimizer(options: TrainingOptions, model: torch.nn.Module) -> torch.optim.Optimizer:
    """AdamW (betas 0.9, 0.95) or SGD; weight decay on the matrices only."""
    decay = [p for p in model.parameters() if p.requires_grad and p.dim() >= 2]
    no_decay = [p for p in model.parameters() if p.requires_grad and p.dim() < 2]
    groups = [{"params": decay, "weight_decay": options.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    if options.optimizer == "sgd":
        return torch.optim.SGD(groups, lr=options.lr, momentum=options.momentum, foreach=True)
    # fused: one kernel over all parameters (CPU and CUDA); the per-tensor loop is torch's CPU default
    return torch.optim.AdamW(groups, lr=options.lr, betas=(0.9, 0.95), fused=True)
