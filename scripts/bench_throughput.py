"""Tokens/s of the hf_varinit pretraining loop (recording every 10 steps) vs `transformers.Trainer`.

Same model (GPT-2, built with the same rule and seed), same packed data, same batch, optimizer
(AdamW, clip 1.0), warmup + cosine schedule and number of steps, both on CPU in this one process
with the same thread count. Throughput is measured over the steps after ``--skip`` warmup steps, from
step-end timestamps, so start-up, data loading and the final save are not counted for either.

    python scripts/bench_throughput.py                  # 12 layers, n_embd 128, batch 8 x 128, 60 steps
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from transformers import Trainer, TrainerCallback, TrainingArguments  # noqa: E402

from hf_varinit import from_config  # noqa: E402
from hf_varinit.train.build import build_model_config, load_data  # noqa: E402
from hf_varinit.train.loop import run_pretrain  # noqa: E402
from hf_varinit.train.options import parse_options  # noqa: E402


class StepTimes(TrainerCallback):
    def __init__(self):
        self.times: list[float] = []

    def on_step_end(self, args, state, control, **kwargs):
        self.times.append(time.perf_counter())


class Blocks(torch.utils.data.Dataset):
    def __init__(self, ids: torch.Tensor):
        self.ids = ids

    def __len__(self):
        return len(self.ids)

    def __getitem__(self, i):
        return {"input_ids": self.ids[i], "labels": self.ids[i]}


def bench_ours(argv: list[str], work: Path, steps: int, skip: int) -> tuple[float, float]:
    """(tokens/s over the measured steps, tokens/s of the median step)."""
    out = work / "ours"
    options = parse_options([*argv, "--output-dir", str(out), "--log-every", "1", "--record-every", "10",
                             "--eval-every", "none", "--checkpoint-every", "none"])
    run_pretrain(options)
    lines = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    # each line covers one step; the last line also holds the final eval and is left out
    window = [x for x in lines if skip < x["step"] < steps]
    tokens_per_step = options.training.batch_size * options.model.block_size
    per_step = [tokens_per_step / x["tokens_per_s"] for x in window]
    return len(per_step) * tokens_per_step / sum(per_step), tokens_per_step / statistics.median(per_step)


def bench_trainer(argv: list[str], work: Path, steps: int, skip: int) -> tuple[float, float]:
    options = parse_options(argv)
    t, m = options.training, options.model
    data = load_data(options)
    model = from_config(build_model_config(m, data.tokenizer), rule=t.init, seed=t.seed)
    args = TrainingArguments(
        output_dir=str(work / "trainer"), max_steps=steps, per_device_train_batch_size=t.batch_size,
        learning_rate=t.lr, warmup_steps=t.warmup_steps, lr_scheduler_type="cosine", optim="adamw_torch",
        adam_beta2=0.95, weight_decay=t.weight_decay, max_grad_norm=t.grad_clip or 0.0, logging_steps=10,
        save_strategy="no", eval_strategy="no", report_to=[], use_cpu=True, disable_tqdm=True, seed=t.seed,
        dataloader_num_workers=0,
    )
    timer = StepTimes()
    trainer = Trainer(model=model, args=args, train_dataset=Blocks(data.train[:]["input_ids"]), callbacks=[timer])
    trainer.train()
    tokens_per_step = t.batch_size * m.block_size
    per_step = np.diff(timer.times[skip - 1 : steps - 1])  # steps skip+1 .. steps-1, as for ours
    return len(per_step) * tokens_per_step / per_step.sum(), tokens_per_step / float(np.median(per_step))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", default="gpt2-12l-tiny", help="YAML path or bundled config name")
    parser.add_argument("--steps", type=int, default=60)
    parser.add_argument("--skip", type=int, default=5, help="warmup steps left out of the measurement")
    parser.add_argument("--rounds", type=int, default=1, help="alternate ours/Trainer this many times")
    parser.add_argument("--cache-dir", default=None)
    args = parser.parse_args(argv)
    common = ["--config", args.config, "--max-steps", str(args.steps), "--warmup-steps", "5"]
    if args.cache_dir:
        common += ["--cache-dir", args.cache_dir]
    ours, theirs = [], []
    with tempfile.TemporaryDirectory(prefix="bench_throughput_") as tmp:
        for r in range(args.rounds):
            work = Path(tmp) / f"round{r}"
            ours.append(bench_ours(common, work, args.steps, args.skip))
            theirs.append(bench_trainer(common, work, args.steps, args.skip))
    o, t = max(x[0] for x in ours), max(x[0] for x in theirs)
    om, tm = max(x[1] for x in ours), max(x[1] for x in theirs)
    print(f"\n{torch.get_num_threads()} threads, {args.steps} steps, measured steps {args.skip + 1}..{args.steps - 1}")
    print(f"hf_varinit loop (record every 10): {o:8.0f} tokens/s overall, {om:8.0f} at the median step  "
          f"(rounds: {[(round(a), round(b)) for a, b in ours]})")
    print(f"transformers.Trainer:              {t:8.0f} tokens/s overall, {tm:8.0f} at the median step  "
          f"(rounds: {[(round(a), round(b)) for a, b in theirs]})")
    print(f"ratio: {o / t:.3f}x Trainer overall (best round each), {om / tm:.3f}x at the median step")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
