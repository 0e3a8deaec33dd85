"""The three sides the pretraining loop is timed against (shared by scripts/bench_throughput.py and gpu_check.py).

* ``ours``: `hf_varinit.train.loop.run_pretrain` as a user runs it: recording every 10 steps, a metrics line every
  10, no checkpoint, one evaluation batch after the last step. The end of each step is read by wrapping the loop's
  `train_step` (the loop itself is not changed).
* ``trainer``: `transformers.Trainer` on the same model, data, batch, fused AdamW, clip and warmup + cosine
  schedule; step ends from a callback.
* ``bare``: the limit: forward (under autocast when mixed), backward, clip, fused AdamW step, zero_grad. Nothing
  else: no schedule, no loss read back, no logging, no recording.

Each side trains ``steps`` steps. The clock reads the time before the first step and after steps 1, ``skip`` and
``steps``, after a device synchronisation (CUDA), so queued kernels are counted and no side pays a host sync per
step that it would not make itself. `Timing.tokens_per_s` is over steps ``skip + 1 .. steps`` (with ``steps - skip``
a multiple of 10, the window holds its share of record and log steps); the first step is the compile time.

Example:
    >>> setting = Setting(n_embd=128, steps=14, skip=4)
    >>> timing = SIDES["bare"](setting, Path("/tmp/work"))
    >>> timing.tokens_per_s
"""

from __future__ import annotations

import json
import os
import resource
import time
from collections.abc import Callable, Iterator
from contextlib import nullcontext
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
from transformers import Trainer, TrainerCallback, TrainingArguments

from hf_varinit import from_config
from hf_varinit.cli.pretrain import parse_options
from hf_varinit.train import loop
from hf_varinit.train.build import (
    COMPILE_BACKEND_ENV,
    EpochSampler,
    build_model_config,
    build_optimizer,
    load_data,
)
from hf_varinit.train.run_config import PretrainOptions


@dataclass
class Setting:
    """One model, data, batch and precision; every side reads the same."""

    config: str = "gpt2-12l-tiny"  # bundled config or YAML path (12 layers)
    n_embd: int = 128
    n_layer: int | None = None  # None: the config's
    n_head: int | None = None
    block_size: int | None = None
    batch_size: int | None = None
    vocab_size: int | None = None
    steps: int = 14
    warmup_steps: int = 5
    skip: int = 4  # steps left out of the window (the compiling first step among them)
    compile: bool = False
    backend: str = "inductor"  # torch.compile backend of every side
    precision: str = "no"  # no | bf16 | fp16
    record_every: int = 10
    max_chars: int | None = 300_000
    cache_dir: str | None = None
    extra: tuple[str, ...] = ()  # more ``hf-varinit pretrain`` options, last (they win)

    def argv(self) -> list[str]:
        """The ``hf-varinit pretrain`` options of this setting (without the output folder)."""
        optional = {"--n-layer": self.n_layer, "--n-head": self.n_head, "--block-size": self.block_size,
                    "--batch-size": self.batch_size, "--vocab-size": self.vocab_size, "--max-chars": self.max_chars,
                    "--cache-dir": self.cache_dir}
        return ["--config", self.config, "--n-embd", str(self.n_embd), "--max-steps", str(self.steps),
                "--warmup-steps", str(self.warmup_steps), "--mixed-precision", self.precision,
                *[x for flag, value in optional.items() if value is not None for x in (flag, str(value))], *self.extra]

    def options(self) -> PretrainOptions:
        return parse_options(self.argv())


@dataclass
class Timing:
    side: str
    tokens_per_step: int
    timed_steps: int
    window_s: float  # wall time of steps skip + 1 .. steps
    window_cpu_s: float  # CPU time of this process over the same steps (all its threads)
    window_minor_faults: int  # page faults over the same steps (memory the allocator gave back and took again)
    first_step_s: float  # the first step: with compile, the compilation
    extra: dict = field(default_factory=dict)

    @property
    def tokens_per_s(self) -> float:
        return self.tokens_per_step * self.timed_steps / self.window_s

    @property
    def tokens_per_cpu_s(self) -> float:
        """Tokens per second of CPU time: on a shared CPU, the work a side does, not the time others took."""
        return self.tokens_per_step * self.timed_steps / self.window_cpu_s

    def to_dict(self) -> dict:
        return {**asdict(self), "tokens_per_s": self.tokens_per_s, "tokens_per_cpu_s": self.tokens_per_cpu_s}


class StepClock:
    """Wall and CPU times read after step 0 (before the first), 1, ``skip`` and ``steps``; a device sync first."""

    def __init__(self, setting: Setting, device: torch.device | str):
        self.points = {0, 1, setting.skip, setting.steps}
        self.sync = torch.cuda.synchronize if torch.device(device).type == "cuda" else (lambda: None)
        self.times: dict[int, tuple[float, float, int]] = {}

    def mark(self, step: int) -> None:
        if step in self.points and step not in self.times:
            self.sync()
            self.times[step] = (time.perf_counter(), time.process_time(),
                                resource.getrusage(resource.RUSAGE_SELF).ru_minflt)

    def timing(self, side: str, setting: Setting, tokens_per_step: int, **extra) -> Timing:
        (start, start_cpu, start_faults) = self.times[setting.skip]
        (end, end_cpu, end_faults) = self.times[setting.steps]
        return Timing(side, tokens_per_step, setting.steps - setting.skip, end - start, end_cpu - start_cpu,
                      end_faults - start_faults, self.times[1][0] - self.times[0][0], extra)


def device_of() -> torch.device:
    """Where the loop trains: the GPU when there is one (as Accelerate picks), else the CPU."""
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def _model_and_data(setting: Setting):
    options = setting.options()
    t = options.training
    data = load_data(options)
    model = from_config(build_model_config(options.model, data.tokenizer), rule=t.init, seed=t.seed)
    return options, data, model


def run_ours(setting: Setting, work: Path) -> Timing:
    """`run_pretrain` with the loop's own settings for recording and logging; step ends from its `train_step`."""
    options = parse_options([*setting.argv(), "--output-dir", str(work / "ours"), "--record-every",
                             str(setting.record_every), "--log-every", "10", "--eval-every", "none",
                             "--eval-batches", "1", "--checkpoint-every", "none", "--disable-tqdm",
                             *(["--compile"] if setting.compile else [])])
    clock, original, done = StepClock(setting, device_of()), loop.train_step, [0]

    def timed_step(*args, **kwargs):
        if not done[0]:
            clock.mark(0)
        outcome = original(*args, **kwargs)
        done[0] += 1
        clock.mark(done[0])
        return outcome

    loop.train_step, backend = timed_step, os.environ.get(COMPILE_BACKEND_ENV)
    os.environ[COMPILE_BACKEND_ENV] = setting.backend  # the loop reads its compile backend from the environment
    try:
        result = loop.run_pretrain(options)
    finally:
        loop.train_step = original
        if backend is None:
            os.environ.pop(COMPILE_BACKEND_ENV)
        else:
            os.environ[COMPILE_BACKEND_ENV] = backend
    lines = [json.loads(line) for line in result.metrics_path.read_text().splitlines()]
    return clock.timing("ours", setting, options.training.batch_size * options.model.block_size,
                        loss=lines[-1]["loss"], scaler_skips=lines[-1]["scaler_skips"], compile_s=result.compile_s)


class _Blocks(torch.utils.data.Dataset):
    def __init__(self, ids: torch.Tensor):
        self.ids = ids

    def __len__(self):
        return len(self.ids)

    def __getitem__(self, i):
        return {"input_ids": self.ids[i], "labels": self.ids[i]}


class _ClockCallback(TrainerCallback):
    def __init__(self, clock: StepClock):
        self.clock = clock

    def on_step_begin(self, args, state, control, **kwargs):
        if state.global_step == 0:
            self.clock.mark(0)

    def on_step_end(self, args, state, control, **kwargs):
        self.clock.mark(state.global_step)


def run_trainer(setting: Setting, work: Path) -> Timing:
    """`transformers.Trainer` (``bf16``/``fp16`` and ``torch_compile`` as the setting asks)."""
    options, data, model = _model_and_data(setting)
    t = options.training
    device = device_of()
    args = TrainingArguments(
        output_dir=str(work / "trainer"), max_steps=setting.steps, per_device_train_batch_size=t.batch_size,
        learning_rate=t.lr, warmup_steps=t.warmup_steps, lr_scheduler_type="cosine", optim="adamw_torch_fused",
        adam_beta2=0.95, weight_decay=t.weight_decay, max_grad_norm=t.grad_clip or 0.0, logging_steps=10,
        save_strategy="no", eval_strategy="no", report_to=[], use_cpu=device.type == "cpu", disable_tqdm=True,
        seed=t.seed, dataloader_num_workers=0, dataloader_drop_last=True,  # as the loop: every step a full batch
        bf16=setting.precision == "bf16", fp16=setting.precision == "fp16",
        torch_compile=setting.compile, torch_compile_backend=setting.backend if setting.compile else None,
    )
    clock = StepClock(setting, device)
    trainer = Trainer(model=model, args=args, train_dataset=_Blocks(data.train[:]["input_ids"]),
                      callbacks=[_ClockCallback(clock)])
    out = trainer.train()
    return clock.timing("trainer", setting, t.batch_size * options.model.block_size, loss=out.training_loss)


def bare_batches(ids: torch.Tensor, batch_size: int, seed: int, device: torch.device) -> Iterator[torch.Tensor]:
    """(B, T) blocks in a seeded order, epoch after epoch, on ``device``."""
    sampler = EpochSampler(len(ids), seed)
    while True:
        order = list(sampler)
        for i in range(0, len(order) - batch_size + 1, batch_size):
            yield ids[order[i : i + batch_size]].to(device, non_blocking=True)
        sampler.epoch += 1


def bare_steps(model: torch.nn.Module, optimizer: torch.optim.Optimizer, batches: Iterator[torch.Tensor], n: int,
               clip: float | None, autocast: Callable[[], object], on_step: Callable[[], None] = lambda: None) -> None:
    """``n`` steps of the bare loop: forward, backward, clip, optimizer step, zero_grad (nothing else)."""
    params = [p for p in model.parameters() if p.requires_grad]
    for _ in range(n):
        ids = next(batches)
        with autocast():
            loss = model(input_ids=ids, labels=ids, use_cache=False).loss
        loss.backward()
        if clip:
            torch.nn.utils.clip_grad_norm_(params, clip)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        on_step()


def run_bare(setting: Setting, work: Path) -> Timing:
    """The bare loop on the same model, blocks, batch, clip and fused AdamW, under autocast when the setting is
    mixed (fp16 without a grad scaler: the limit, not a recipe)."""
    options, data, model = _model_and_data(setting)
    t = options.training
    device = device_of()
    model.to(device).train()
    optimizer = build_optimizer(t, model)
    if setting.compile:
        model = torch.compile(model, backend=setting.backend)
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(setting.precision)
    autocast = (lambda: torch.autocast(device.type, dtype=dtype)) if dtype else nullcontext
    batches = bare_batches(data.train[:]["input_ids"], t.batch_size, t.seed, device)
    clock, done = StepClock(setting, device), [0]

    def tick():
        done[0] += 1
        clock.mark(done[0])

    clock.mark(0)
    bare_steps(model, optimizer, batches, setting.steps, t.grad_clip, autocast, tick)
    return clock.timing("bare", setting, t.batch_size * options.model.block_size)


SIDES: dict[str, Callable[[Setting, Path], Timing]] = {"ours": run_ours, "trainer": run_trainer, "bare": run_bare}
