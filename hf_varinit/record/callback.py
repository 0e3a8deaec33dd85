"""`VarianceCallback`: record per-layer Q/K/V weight statistics inside a `transformers.Trainer` run.

Example:
    >>> trainer = Trainer(model=model, args=args, train_dataset=ds, callbacks=[VarianceCallback(every=10)])
    >>> trainer.train()  # args.output_dir/variance.safetensors, and one in every checkpoint-N folder
"""

from __future__ import annotations

import os
import warnings
from pathlib import Path

from transformers import TrainerCallback, TrainerControl, TrainerState, TrainingArguments

from hf_varinit.errors import StatsError
from hf_varinit.record.recorder import VarianceRecorder
from hf_varinit.record.stats_file import library_versions, load_stats


class VarianceCallback(TrainerCallback):
    """Record the weight statistics at the start (step 0), every ``every`` steps and at the end.

    Args:
        every (`int`): record when ``global_step % every == 0``.
        output_dir (`str`, *optional*): where ``variance.safetensors`` goes at the end (default
            ``args.output_dir``). At each save, a copy goes into the checkpoint folder as well.
        rule: the init rule spec the model was built with (default: ``model.config.varinit_rule``).

    Only the world-process zero writes files. It alone records, too, unless the weights are sharded: with FSDP2
    (DTensor) parameters every rank computes the statistics of its shards and one all-reduce per record sums
    them; with DeepSpeed ZeRO-3 every rank gathers the tracked tensors one at a time (`on_train_begin` raises
    `ConfigError` if deepspeed is not importable). On ``trainer.train(resume_from_checkpoint=...)`` the record
    continues from the ``variance.safetensors`` saved in that checkpoint.
    """

    def __init__(self, every: int = 10, output_dir: str | os.PathLike | None = None, rule=None):
        if isinstance(every, bool) or not isinstance(every, int) or every < 1:
            raise StatsError(f"VarianceCallback: every={every!r} must be an integer >= 1, e.g. every=10")
        self.every = every
        self.output_dir = output_dir
        self.rule = rule
        self.recorder: VarianceRecorder | None = None

    def _metadata(self, args: TrainingArguments, state: TrainerState) -> dict:
        precision = "bf16" if args.bf16 else "fp16" if args.fp16 else "no"
        return {
            "seed": args.seed, "optimizer": str(args.optim), "lr": args.learning_rate,
            "batch_size": args.per_device_train_batch_size * args.world_size,
            "grad_accum": args.gradient_accumulation_steps, "mixed_precision": precision,
            "max_steps": state.max_steps, "world_size": args.world_size, "source": "trainer",
            "versions": library_versions(),
        }

    def on_train_begin(self, args: TrainingArguments, state: TrainerState, control: TrainerControl, model=None,
                       **kwargs):
        if model is None:
            return
        rule = self.rule if self.rule is not None else (
            getattr(model, "varinit_init_rule", None) or getattr(getattr(model, "config", None), "varinit_rule", None))
        recorder = VarianceRecorder(model, every=self.every, rule=rule)  # ZeRO-3 without deepspeed: ConfigError
        # sharded weights: every rank joins each record's collective; otherwise the main process records alone
        self.recorder = recorder if state.is_world_process_zero or recorder.collective else None
        self._started = False  # the first record waits for on_step_begin: a resumed state is loaded by then

    def on_step_begin(self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kwargs):
        if self.recorder is None or self._started:
            return
        self._started = True
        step = state.global_step
        saved = Path(args.output_dir) / f"checkpoint-{step}" / "variance.safetensors"
        if step > 0 and saved.is_file():  # resumed: continue the checkpoint's record
            self.recorder.load_records(load_stats(saved))
            self.recorder.truncate(step)
        elif step > 0:
            warnings.warn(f"VarianceCallback: resumed at step {step} without {saved}; the record starts here",
                          stacklevel=2)
            self.recorder.record(step)
        else:
            self.recorder.maybe_record(step)  # step 0 (the init), or a resumed step on the every-grid

    def on_step_end(self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kwargs):
        if self.recorder is not None:
            self.recorder.maybe_record(state.global_step)

    def on_save(self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kwargs):
        if self.recorder is None or not state.is_world_process_zero:
            return
        folder = Path(args.output_dir) / f"checkpoint-{state.global_step}"
        self.recorder.save(folder, self._metadata(args, state))

    def on_train_end(self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kwargs):
        if self.recorder is None:
            return
        self.recorder.record(state.global_step)
        if not state.is_world_process_zero:
            return
        out = Path(self.output_dir or args.output_dir)
        self.recorder.save(out, self._metadata(args, state))
