"""The parts a pretraining run is built from: the output folder, the Accelerator, the data and its loaders, the
model config and the optimizer (the ``get_dataloaders`` skeleton of Accelerate's examples), and `prepare_model`:
Accelerate's ``prepare`` (DDP, or FSDP2 with ``accelerate launch --use_fsdp --fsdp_version 2``), or torch's own
``fully_shard`` when ``HF_VARINIT_FULLY_SHARD=1`` (2 CPU processes with gloo, where Accelerate refuses FSDP),
then ``torch.compile`` with ``--compile``.
"""

from __future__ import annotations

import os
import tempfile
from datetime import timedelta
from functools import partial
from pathlib import Path

import torch
import torch.distributed as dist
from accelerate import Accelerator
from accelerate.state import AcceleratorState, GradientState
from accelerate.tracking import GeneralTracker
from accelerate.utils import (
    DataLoaderConfiguration,
    DistributedType,
    InitProcessGroupKwargs,
    is_mlu_available,
    is_npu_available,
    is_tensorboard_available,
    is_trackio_available,
    is_wandb_available,
    is_xpu_available,
)
from torch.distributed.fsdp import fully_shard
from torch.utils.data import DataLoader, Sampler

from hf_varinit.arch.builder import build_config
from hf_varinit.errors import ConfigError, DataError
from hf_varinit.train.checkpoint import load_sharded_state, save_sharded_state
from hf_varinit.train.data import LMData, build_lm_datasets
from hf_varinit.train.run_config import ModelOptions, PretrainOptions, TrainingOptions

FULLY_SHARD_ENV = "HF_VARINIT_FULLY_SHARD"  # 1: shard with torch's fully_shard (the CPU / gloo FSDP2 path)
COMPILE_BACKEND_ENV = "HF_VARINIT_COMPILE_BACKEND"  # torch.compile backend of --compile (default: inductor)
_FALSE_WORDS = ("", "0", "false", "no", "off")
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


def set_collective_timeout(timeout: timedelta) -> None:
    """The default process group's timeout, which every collective of the run uses (DDP's, Accelerate's gathers,
    ``fully_shard``'s and ``torch.distributed.checkpoint``'s): after it, a rank waiting for a dead or hung one raises.

    Accelerate passes ``InitProcessGroupKwargs(timeout=)`` to ``init_process_group``, but leaves out a value equal to
    its own default (600 s, so torch's 30-minute gloo default would apply), and a group made earlier (a user's
    script, an earlier run in the process) keeps its own. So it is set here on the group itself.
    """
    if dist.is_available() and dist.is_initialized():
        dist.distributed_c10d._set_pg_timeout(timeout)  # torch's only way to change a made group's timeout


def make_accelerator(options: TrainingOptions, output_dir: Path, *trackers: GeneralTracker) -> Accelerator:
    """The run's `Accelerator`: precision, gradient accumulation, global batches split over the processes, the
    trackers (``trackers`` and ``--report-to``) and the collective timeout (``--collective-timeout``, the process
    group's). Under Accelerate's FSDP, checkpoints hold the sharded state.
    """
    log_with = [*trackers, *_check_tracker(options.report_to)]
    reset_accelerate_state()  # an earlier in-process Accelerator (a Trainer, say) must not fix our precision
    timeout = timedelta(seconds=options.collective_timeout)
    accelerator = Accelerator(
        cpu=_multi_process_without_accelerator(), mixed_precision=options.mixed_precision,
        gradient_accumulation_steps=options.grad_accum, log_with=log_with or None, project_dir=str(output_dir),
        dataloader_config=DataLoaderConfiguration(split_batches=True),
        kwargs_handlers=[InitProcessGroupKwargs(timeout=timeout)],
    )
    set_collective_timeout(timeout)
    if accelerator.distributed_type == DistributedType.FSDP:
        accelerator.state.fsdp_plugin.set_state_dict_type("SHARDED_STATE_DICT")  # each rank saves its shards
    return accelerator


# ----------------------------------------------------------------------------- the model: shard, prepare, compile


def fully_shard_requested(accelerator: Accelerator) -> bool:
    """Whether ``HF_VARINIT_FULLY_SHARD`` asks for torch's ``fully_shard`` (refused without a process group)."""
    if os.environ.get(FULLY_SHARD_ENV, "").strip().lower() in _FALSE_WORDS:
        return False
    if accelerator.distributed_type == DistributedType.FSDP:
        return False  # Accelerate's own FSDP shards in `prepare`
    if not torch.distributed.is_initialized():
        raise ConfigError(f"{FULLY_SHARD_ENV}=1 shards over the processes of a launched run; start it with torchrun "
                          f"or `accelerate launch --multi_gpu --num_processes N`, or unset {FULLY_SHARD_ENV}")
    return True


def shard_blocks(model: torch.nn.Module, optimizer: torch.optim.Optimizer) -> torch.nn.Module:
    """``fully_shard`` each transformer block (the model's ``_no_split_modules``) and the root, as Accelerate's
    FSDP2 auto-wrap does; the optimizer is pointed at the new (DTensor) parameters, as Accelerate's ``prepare``
    does. The model is sharded in place and returned."""
    blocks = set(getattr(model, "_no_split_modules", None) or ())
    before = {id(p): name for name, p in model.named_parameters()}
    for module in list(model.modules()):
        if type(module).__name__ in blocks:
            fully_shard(module)
    fully_shard(model)
    after = dict(model.named_parameters())
    for group in optimizer.param_groups:
        group["params"] = [after[before[id(p)]] for p in group["params"]]
    return model


def prepare_model(accelerator: Accelerator, model: torch.nn.Module, optimizer: torch.optim.Optimizer, scheduler,
                  compile: bool = False):
    """The model, optimizer and scheduler, ready to train: Accelerate's ``prepare``, or (``HF_VARINIT_FULLY_SHARD``)
    `shard_blocks` with the sharded model and optimizer saved by every rank into each ``save_state`` folder
    (`save_sharded_state`); then ``torch.compile`` when ``compile`` (backend: ``HF_VARINIT_COMPILE_BACKEND``).

    Returns:
        (model, optimizer, scheduler); build the recorder's entries from this model (`VarianceRecorder.rebind`).
    """
    if fully_shard_requested(accelerator):
        model = shard_blocks(model.to(accelerator.device), optimizer)
        accelerator.register_for_checkpointing(scheduler)  # the same on every rank: Accelerate saves it once
        accelerator.register_save_state_pre_hook(partial(save_sharded_state, model=model, optimizer=optimizer))
        accelerator.register_load_state_pre_hook(partial(load_sharded_state, model=model, optimizer=optimizer))
    else:
        model, optimizer, scheduler = accelerator.prepare(model, optimizer, scheduler)
    if compile:
        model = torch.compile(model, backend=os.environ.get(COMPILE_BACKEND_ENV) or "inductor")
    return model, optimizer, scheduler


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
