"""The project's GPU acceptance test: one command, offline, that checks what only a GPU can show.

    python scripts/gpu_check.py                       # full: about 6-8 min on one H100
    python scripts/gpu_check.py --quick               # one step of each path: under 2 min
    python scripts/gpu_check.py --device cpu --quick  # the same paths, tiny, on CPU (CI: tests/test_gpu_check.py)
    python scripts/gpu_check.py --only precision fsdp2  # some of the checks

It prints one JSON object on stdout (progress goes to stderr) and writes it to ``--out`` (default
``benchmarks/gpu_check-<device>-<full|quick>.json``, rewritten after every check, so a run cut short keeps what
it measured). The exit status is 0 when no check failed (a check that cannot run here is "skipped").

Size: GPT-2 small's dimensions (12 layers x 768, 12 heads, 1024 tokens, batch 16) with the vocabulary of the
tokenizer the loop trains offline on the Python standard library (50257 asked for); on CPU 2 layers x 64. The
data is the bundled corpus: no hub.

Checks (the figures and limits of each are in its "figures" and "criteria"):

* ``precision``: `run_pretrain` in fp32, bf16 and fp16 (grad scaler) from the same seed, so the same init and
  batches, recording every 10 steps (every step with --quick), 30 steps (1). Every loss finite; autocast seen in
  force (the dtype of the first attention projection's output); the step-0 statistics identical; the bf16 and fp16
  variances at the last step within `PRECISION_TOLERANCE` (relative, every tracked tensor) of fp32's;
  ``scaler_skips`` reported.
* ``compile``: tokens/s, compile time (the first step, apart) and model FLOPs utilisation for this loop
  (``--compile``, bf16, recording every 10 steps), `transformers.Trainer` (``bf16``, ``torch_compile``) and the bare
  loop (`sides.py`), inductor (aot_eager on CPU: inductor's C++ build takes minutes there). MFU = tokens/s x
  (6 N + 12 L d T) / peak, N the parameters without the position embedding (the tied head counted once), L layers,
  d width, T tokens per sequence (PaLM, appendix B; nanoGPT's ``estimate_mfu``); the peak is the GPU's dense bf16
  tensor-core peak, from `PEAK_BF16_TFLOPS` by device name (or ``--peak-tflops``).
* ``fsdp2``: ``accelerate launch --use_fsdp --fsdp_version 2`` with one process: statistics recorded from the
  DTensor shards, a sharded checkpoint (``.distcp`` files) at step k, ``--resume`` from it to step 2k; its final
  weights and its statistics match an unsharded run of 2k steps (constant lr, so a run continued to 2k steps is the
  same run). Needs CUDA: "skipped" elsewhere.
* ``recorder``: overhead of recording every step vs never (interleaved blocks, device-synchronised at block ends),
  the kernel alone, its values against float64, and the host transfers of one ``record``: calls that bring tensor
  data to the host are counted by wrapping ``Tensor.cpu/item/tolist/numpy/to`` and ``float()/int()/bool()``
  of tensors, and on CUDA also by torch's sync debug mode (every synchronising CUDA call warns). One is the limit.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import json
import math
import os
import platform
import shlex
import statistics
import subprocess
import sys
import tempfile
import time
import traceback
import warnings
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SCHEMA = "hf_varinit.gpu_check/1"
CHECK_NAMES = ("precision", "recorder", "fsdp2", "compile")  # run in this order: the longest last
# dense bf16 tensor-core peak, TFLOP/s, from NVIDIA's data sheets; the first name found in the device name wins
PEAK_BF16_TFLOPS = (("H100 PCIe", 756.0), ("H100 NVL", 835.0), ("H200 NVL", 835.0), ("GH200", 989.4),
                    ("H100", 989.4), ("H200", 989.4), ("A100", 312.0), ("L40S", 362.0), ("L4", 121.0))
# max |var_p - var_fp32| / var_fp32 at the last record; on CPU (2 x 64, 30 steps) bf16 gives 1e-4 and fp16 1e-5
PRECISION_TOLERANCE = {"bf16": 0.02, "fp16": 0.01}
WEIGHT_TOLERANCE = 1e-4  # FSDP2 resume vs unsharded: max |a - b| / max |b| per tensor
SIZES = {  # model, data and batch of each device
    "cuda": {"n_layer": 12, "n_embd": 768, "n_head": 12, "block_size": 1024, "batch_size": 16, "vocab_size": 50257,
             "max_chars": 8_000_000},
    "cpu": {"n_layer": 1, "n_embd": 64, "n_head": 4, "block_size": 64, "batch_size": 4, "vocab_size": 512,
            "max_chars": 200_000},
}


def log(message: str) -> None:
    print(f"[gpu_check {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


@dataclass
class Context:
    device: str
    quick: bool
    work: Path
    backend: str
    peak_tflops: float | None
    size: dict = field(default_factory=dict)

    def setting(self, **overrides):
        from sides import Setting

        base = {k: v for k, v in self.size.items()}
        return Setting(config="gpt2-12l-tiny", cache_dir=str(self.work / "cache"), backend=self.backend,
                       **{**base, **overrides})


class Check:
    """The outcome of one check: figures, named criteria (each ok or not), and its status."""

    def __init__(self):
        self.figures: dict = {}
        self.criteria: list[dict] = []
        self.skipped: str | None = None

    def require(self, name: str, ok: bool, value=None, limit=None) -> bool:
        self.criteria.append({"name": name, "ok": bool(ok), "value": value, "limit": limit})
        return bool(ok)

    def result(self, wall_s: float, error: str | None = None) -> dict:
        if self.skipped:
            status = "skipped"
        else:
            status = "failed" if error or not self.criteria or not all(c["ok"] for c in self.criteria) else "passed"
        return {"status": status, "reason": self.skipped, "wall_s": round(wall_s, 2), "figures": self.figures,
                "criteria": self.criteria, "error": error}


# ----------------------------------------------------------------------------- helpers


def _rel(a, b) -> float:
    """max |a - b| / |b| over the elements (float64)."""
    import numpy as np

    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    return float(np.max(np.abs(a - b) / np.maximum(np.abs(b), 1e-30))) if a.size else 0.0


@contextlib.contextmanager
def autocast_probe(dtypes: list):
    """Record the output dtype of the first attention projection in every forward of the model the loop builds."""
    from hf_varinit.train import loop

    built = loop.from_config

    def from_config(*args, **kwargs):
        model = built(*args, **kwargs)
        model.get_submodule("transformer.h.0.attn.c_attn").register_forward_hook(
            lambda m, i, o: dtypes.append(str(o.dtype).removeprefix("torch.")))
        return model

    loop.from_config = from_config
    try:
        yield dtypes
    finally:
        loop.from_config = built


class HostTransfers:
    """Count the calls that bring tensor data to the host while the context is open.

    ``.cpu()``, ``.item()``, ``.tolist()``, ``float()/int()/bool()`` of a tensor count wherever the tensor lives (on a
    CPU they mark the place a GPU run would transfer); ``.numpy()`` and ``.to(<cpu>)`` count for a tensor that is not
    on the CPU. On CUDA, torch's sync debug mode counts every synchronising CUDA call besides (`cuda_syncs`).
    """

    METHODS = ("cpu", "item", "tolist", "__float__", "__int__", "__bool__", "numpy", "to")

    def __init__(self, cuda: bool):
        self.calls: dict[str, int] = {}
        self.cuda, self.cuda_syncs = cuda, None

    @property
    def count(self) -> int:
        return sum(self.calls.values())

    def __enter__(self):
        import torch

        self._saved = {name: getattr(torch.Tensor, name) for name in self.METHODS}

        def counted(name, original):
            def wrapper(tensor, *args, **kwargs):
                off_cpu = tensor.device.type != "cpu"
                to_cpu = name == "to" and off_cpu and any(
                    str(a).startswith("cpu") for a in (*args, kwargs.get("device")) if isinstance(a, (str,
                                                                                                      torch.device)))
                if (name not in ("numpy", "to") or (name == "numpy" and off_cpu) or to_cpu):
                    self.calls[name] = self.calls.get(name, 0) + 1
                return original(tensor, *args, **kwargs)
            return wrapper

        for name, original in self._saved.items():
            setattr(torch.Tensor, name, counted(name, original))
        if self.cuda:
            self._warnings = warnings.catch_warnings(record=True)
            self._caught = self._warnings.__enter__()
            warnings.simplefilter("always")
            torch.cuda.set_sync_debug_mode("warn")
        return self

    def __exit__(self, *exc):
        import torch

        for name, original in self._saved.items():
            setattr(torch.Tensor, name, original)
        if self.cuda:
            torch.cuda.set_sync_debug_mode(0)
            self._warnings.__exit__(*exc)
            self.cuda_syncs = sum("synchroniz" in str(w.message) for w in self._caught)
        return False


def peak_bf16_tflops(device_name: str) -> tuple[str, float] | None:
    """(table key, dense bf16 TFLOP/s) of the first `PEAK_BF16_TFLOPS` key in ``device_name``, or None."""
    return next(((key, tflops) for key, tflops in PEAK_BF16_TFLOPS if key in device_name), None)


def _device_info(device: str, peak_override: float | None) -> dict:
    import torch

    info = {"type": device, "torch": torch.__version__, "python": platform.python_version(),
            "threads": torch.get_num_threads()}
    if device == "cuda":
        name = torch.cuda.get_device_name(0)
        match = peak_bf16_tflops(name)
        peak = peak_override or (match[1] if match else None)
        source = ("--peak-tflops" if peak_override else f"table: {match[0]}" if match
                  else "unknown: pass --peak-tflops")
        info.update(name=name, count=torch.cuda.device_count(), cuda=torch.version.cuda,
                    capability=".".join(map(str, torch.cuda.get_device_capability(0))),
                    memory_gib=round(torch.cuda.get_device_properties(0).total_memory / 2**30, 1),
                    bf16_peak_tflops=peak, peak_source=source)
    else:
        info.update(name=platform.processor() or platform.machine(), bf16_peak_tflops=peak_override,
                    peak_source="--peak-tflops" if peak_override else "no CPU peak: MFU not computed")
    return info


def _flops_per_token(ctx: Context, vocab_size: int) -> float:
    """6 N + 12 L d T (PaLM appendix B): N the parameters without the position embedding (the tied head once)."""
    import torch
    from transformers import GPT2Config, GPT2LMHeadModel

    s = ctx.size
    config = GPT2Config(n_layer=s["n_layer"], n_embd=s["n_embd"], n_head=s["n_head"], vocab_size=vocab_size,
                        n_positions=s["block_size"])
    with torch.device("meta"):
        model = GPT2LMHeadModel(config)
    n = sum(p.numel() for p in model.parameters()) - model.transformer.wpe.weight.numel()
    return 6 * n + 12 * s["n_layer"] * s["n_embd"] * s["block_size"]


def _reset(device: str) -> None:
    import torch

    from hf_varinit.train.build import reset_accelerate_state

    reset_accelerate_state()
    torch._dynamo.reset()
    if device == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()


def _peak_gib(device: str) -> float | None:
    import torch

    return round(torch.cuda.max_memory_allocated() / 2**30, 2) if device == "cuda" else None


# ----------------------------------------------------------------------------- the checks


def check_precision(ctx: Context, check: Check) -> None:
    import numpy as np

    from hf_varinit.cli.pretrain import parse_options
    from hf_varinit.record.stats_file import load_stats
    from hf_varinit.train.loop import run_pretrain

    steps, every, warmup = (1, 1, 0) if ctx.quick else (30, 10, 5)  # no warmup: the one quick step moves the weights
    check.figures.update(steps=steps, record_every=every, warmup_steps=warmup, tolerance=PRECISION_TOLERANCE,
                         compared="variance of every tracked tensor at the last record, relative to fp32")
    stats, expected = {}, {"no": "float32", "bf16": "bfloat16", "fp16": "float16"}
    for precision in ("no", "bf16", "fp16"):
        _reset(ctx.device)
        out = ctx.work / f"precision-{precision}"
        argv = [*ctx.setting(precision=precision, steps=steps, warmup_steps=warmup).argv(), "--output-dir", str(out),
                "--record-every",
                str(every), "--log-every", "1", "--eval-every", "none", "--eval-batches", "1",
                "--checkpoint-every", "none", "--disable-tqdm"]
        started = time.perf_counter()
        with autocast_probe([]) as dtypes:
            result = run_pretrain(parse_options(argv))
        lines = [json.loads(line) for line in result.metrics_path.read_text().splitlines()]
        losses = [x["loss"] for x in lines]
        stats[precision] = load_stats(result.stats_path)
        name = "fp32" if precision == "no" else precision
        check.figures[name] = {"final_loss": losses[-1], "scaler_skips": lines[-1]["scaler_skips"],
                               "nonfinite_skips": lines[-1]["nonfinite_skips"], "autocast_dtype": sorted(set(dtypes)),
                               "wall_s": round(time.perf_counter() - started, 2), "peak_gib": _peak_gib(ctx.device),
                               "vocab_size": stats[precision].metadata.get("config", {}).get("vocab_size")}
        check.require(f"{name}: every loss finite", all(v is not None and math.isfinite(v) for v in losses),
                      value=losses[-1])
        check.require(f"{name}: forward in {expected[precision]} (autocast {'off' if precision == 'no' else 'on'})",
                      set(dtypes) == {expected[precision]}, value=sorted(set(dtypes)), limit=expected[precision])
    reference = stats["no"]
    for precision in ("bf16", "fp16"):
        s = stats[precision]
        check.require(f"{precision}: the same init (step-0 statistics identical to fp32)",
                      np.array_equal(s.var[0], reference.var[0]) and s.step.tolist() == reference.step.tolist())
        diff = _rel(s.var[-1], reference.var[-1])
        drift = np.abs(reference.var[-1] - reference.var[0])
        check.figures[precision].update(
            var_rel_diff_max=diff, var_diff_over_drift_median=float(np.median(
                np.abs(s.var[-1] - reference.var[-1]) / np.maximum(drift, 1e-30))),
            loss_diff=abs(check.figures[precision]["final_loss"] - check.figures["fp32"]["final_loss"]))
        check.require(f"{precision}: variances at step {steps} within tolerance of fp32", diff
                      <= PRECISION_TOLERANCE[precision], value=diff, limit=PRECISION_TOLERANCE[precision])


def check_compile(ctx: Context, check: Check) -> None:
    from sides import SIDES

    steps, skip = (3, 1) if ctx.quick else (30, 10)
    setting = ctx.setting(compile=True, precision="bf16", steps=steps, skip=skip)
    vocab = None
    check.figures.update(backend=ctx.backend, precision="bf16", steps=steps, timed_steps=steps - skip,
                         tokens_per_step=setting.batch_size * setting.block_size,
                         mfu_formula="tokens/s * (6*N + 12*L*d*T) / peak; N = parameters without wpe",
                         peak_tflops=ctx.peak_tflops)
    for side in ("ours", "trainer", "bare"):
        _reset(ctx.device)
        timing = SIDES[side](setting, ctx.work / f"compile-{side}")
        if vocab is None:
            from hf_varinit.train.build import load_data

            vocab = len(load_data(setting.options()).tokenizer)
            check.figures["flops_per_token"] = _flops_per_token(ctx, vocab)
        flops = timing.tokens_per_s * check.figures["flops_per_token"]
        loss = timing.extra.get("loss")
        check.figures[side] = {"tokens_per_s": round(timing.tokens_per_s, 1),
                               "compile_s": round(timing.first_step_s, 2), "achieved_tflops": round(flops / 1e12, 3),
                               "mfu": round(flops / (ctx.peak_tflops * 1e12), 4) if ctx.peak_tflops else None,
                               "loss": loss, "peak_gib": _peak_gib(ctx.device)}
        check.require(f"{side}: trained with a finite loss" if loss is not None else f"{side}: trained",
                      loss is None or math.isfinite(loss), value=loss)
    ours = check.figures["ours"]["tokens_per_s"]
    check.figures["ratio_ours_to_bare"] = round(ours / check.figures["bare"]["tokens_per_s"], 4)
    check.figures["ratio_ours_to_trainer"] = round(ours / check.figures["trainer"]["tokens_per_s"], 4)


def _fsdp_commands(ctx: Context, k: int) -> dict[str, list[str]]:
    """The unsharded reference (2k steps), the sharded run (k steps, a checkpoint at k) and its resume to 2k."""
    extra = ("--lr-schedule", "constant", "--record-every", "1", "--log-every", "1", "--eval-every", "none",
             "--eval-batches", "1", "--checkpoint-every", str(k), "--keep-last", "5", "--disable-tqdm")

    def pretrain(steps: int, out: str) -> list[str]:
        setting = ctx.setting(block_size=256, batch_size=8, steps=steps, warmup_steps=0, extra=extra)
        return ["-m", "hf_varinit", "pretrain", *setting.argv(), "--output-dir", str(ctx.work / out)]

    launch = [sys.executable, "-m", "accelerate.commands.launch", "--use_fsdp", "--fsdp_version", "2",
              "--fsdp_auto_wrap_policy", "TRANSFORMER_BASED_WRAP", "--fsdp_transformer_layer_cls_to_wrap", "GPT2Block",
              "--fsdp_state_dict_type", "SHARDED_STATE_DICT", "--num_processes", "1", "--num_machines", "1",
              "--mixed_precision", "no", "--dynamo_backend", "no"]
    return {"unsharded": [sys.executable, *pretrain(2 * k, "fsdp2-unsharded")],
            "sharded": [*launch, *pretrain(k, "fsdp2-sharded")],
            "resume": [*launch, *pretrain(2 * k, "fsdp2-sharded"), "--resume"]}


def check_fsdp2(ctx: Context, check: Check) -> None:
    k = 1 if ctx.quick else 3
    commands = _fsdp_commands(ctx, k)
    check.figures["commands"] = {name: shlex.join(cmd) for name, cmd in commands.items()}
    if ctx.device != "cuda":
        check.skipped = "needs CUDA"
        return
    import numpy as np
    from safetensors.numpy import load_file

    from hf_varinit.record.stats_file import load_stats

    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "TQDM_DISABLE": "1",
           "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))}
    outputs = {}
    for name, cmd in commands.items():
        started = time.perf_counter()
        proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
        outputs[name] = proc.stdout + proc.stderr
        check.figures[f"{name}_wall_s"] = round(time.perf_counter() - started, 1)
        if not check.require(f"{name} run exits 0", proc.returncode == 0, value=proc.returncode):
            check.figures[f"{name}_output_tail"] = outputs[name][-3000:]
            return
    sharded, unsharded = ctx.work / "fsdp2-sharded", ctx.work / "fsdp2-unsharded"
    files = sorted(str(p.relative_to(sharded)) for p in (sharded / "checkpoints" / f"step_{k}").rglob("*")
                   if p.is_file())
    check.figures["checkpoint_files"] = files[:40]
    check.require("the checkpoint is sharded (.distcp files)", any(f.endswith(".distcp") for f in files))
    check.require(f"the second launch resumed from step {k}", f"resuming from step {k}" in outputs["resume"])
    a, b = load_stats(sharded / "variance.safetensors"), load_stats(unsharded / "variance.safetensors")
    check.require("statistics recorded at every step under FSDP2", a.step.tolist() == list(range(2 * k + 1)),
                  value=a.step.tolist())
    stats_diff = _rel(a.var, b.var) if a.var.shape == b.var.shape else math.inf
    check.require("statistics match the unsharded run", stats_diff <= WEIGHT_TOLERANCE, value=stats_diff,
                  limit=WEIGHT_TOLERANCE)
    wa, wb = load_file(sharded / "final" / "model.safetensors"), load_file(unsharded / "final" / "model.safetensors")
    diffs = {name: float(np.max(np.abs(wa[name] - wb[name])) / max(float(np.max(np.abs(wb[name]))), 1e-30))
             for name in wb if name in wa}
    worst = max(diffs, key=diffs.get) if diffs else None
    check.figures.update(weights_compared=len(diffs), weights_missing=sorted(set(wb) ^ set(wa)),
                         worst_tensor=worst, weights_rel_diff_max=diffs.get(worst))
    check.require("resumed weights match the unsharded run", bool(diffs) and set(wa) == set(wb)
                  and diffs[worst] <= WEIGHT_TOLERANCE, value=diffs.get(worst), limit=WEIGHT_TOLERANCE)


def check_recorder(ctx: Context, check: Check) -> None:
    import torch
    from transformers import GPT2Config

    from hf_varinit import VarianceRecorder, from_config
    from hf_varinit.record.moments import var_mean

    s, cuda = ctx.size, ctx.device == "cuda"
    device = torch.device(ctx.device)
    cycles, per_block = (1, 1) if ctx.quick else (5, 10)
    config = GPT2Config(n_layer=s["n_layer"], n_embd=s["n_embd"], n_head=s["n_head"], vocab_size=s["vocab_size"],
                        n_positions=s["block_size"], bos_token_id=0, eos_token_id=0)
    model = from_config(config, "gpt2", seed=0).to(device).train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4, fused=True)
    recorder = VarianceRecorder(model, every=1, rule="gpt2")
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(0, s["vocab_size"], (s["batch_size"], s["block_size"]), generator=g).to(device)
    autocast = torch.autocast(ctx.device, dtype=torch.bfloat16) if cuda else contextlib.nullcontext()
    sync = torch.cuda.synchronize if cuda else (lambda: None)
    step = 0

    def block(record: bool, n: int) -> float:
        nonlocal step
        sync()
        t0 = time.perf_counter()
        for _ in range(n):
            with autocast:
                loss = model(input_ids=ids, labels=ids, use_cache=False).loss
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            step += 1
            if record:
                recorder.record(step)
        sync()
        return (time.perf_counter() - t0) / n

    block(True, 1)  # warm-up
    ratios, on, off = [], [], []
    for c in range(cycles):
        pair = [block(True, per_block), block(False, per_block)] if c % 2 == 0 else \
            list(reversed([block(False, per_block), block(True, per_block)]))
        on.append(pair[0])
        off.append(pair[1])
        ratios.append(pair[0] / pair[1])

    def alone(call) -> float:
        durations = []
        for _ in range(3 if ctx.quick else 20):
            sync()
            t0 = time.perf_counter()
            call()
            sync()
            durations.append(time.perf_counter() - t0)
        return statistics.median(durations)

    params = list({id(p): p for _, p in recorder.entries}.values())
    kernel, before = alone(recorder.compute), alone(lambda: var_mean(recorder.entries).cpu())
    floor = alone(lambda: [p.detach().sum() for p in params])
    overhead = statistics.median(ratios) - 1
    check.figures.update(tracked=len(recorder.keys), cycles=cycles, steps_per_block=per_block,
                         step_ms_recording=round(1e3 * statistics.median(on), 3),
                         step_ms_not_recording=round(1e3 * statistics.median(off), 3),
                         overhead_pct=round(100 * overhead, 3), goal_pct=0.5,
                         kernel_ms=round(1e3 * kernel, 3), per_tensor_kernel_ms_before=round(1e3 * before, 3),
                         one_read_ms=round(1e3 * floor, 3), kernel_pct_of_step=round(100 * kernel / statistics.median(
                             off), 3))
    with HostTransfers(cuda) as counter:
        recorder.record(step + 1)
    with HostTransfers(cuda) as old:
        var_mean(recorder.entries).cpu()
    check.figures.update(host_transfers_per_record=counter.count, transfer_calls=counter.calls,
                         cuda_syncs_per_record=counter.cuda_syncs, per_tensor_kernel_transfers=old.count,
                         per_tensor_kernel_cuda_syncs=old.cuda_syncs)
    check.require("one host transfer per record (counted calls)", counter.count == 1, value=counter.count, limit=1)
    if cuda:
        check.require("one synchronising CUDA call per record (sync debug mode)", counter.cuda_syncs == 1,
                      value=counter.cuda_syncs, limit=1)
    with torch.no_grad():
        exact = torch.stack([torch.stack(torch.var_mean(e.view(p.detach()).double(), correction=0))
                             for e, p in recorder.entries]).cpu()
    diff = _rel(recorder.compute().double().numpy()[:, 0], exact.numpy()[:, 0])
    check.figures["var_rel_diff_vs_float64"] = diff
    check.require("statistics equal float64 var_mean", diff <= 1e-5, value=diff, limit=1e-5)


CHECKS = {"precision": check_precision, "recorder": check_recorder, "fsdp2": check_fsdp2, "compile": check_compile}


# ----------------------------------------------------------------------------- main


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", choices=("cuda", "cpu"), default="cuda")
    parser.add_argument("--quick", action="store_true", help="one step of each path")
    parser.add_argument("--only", nargs="+", choices=CHECK_NAMES, default=list(CHECK_NAMES))
    parser.add_argument("--out", default=None, help="the JSON file (default benchmarks/gpu_check-<device>-<mode>.json)")
    parser.add_argument("--work-dir", default=None, help="runs, tokenizer and data cache (default: a temporary one)")
    parser.add_argument("--backend", default=None, help="torch.compile backend (default inductor; aot_eager on CPU)")
    parser.add_argument("--peak-tflops", type=float, default=None, help="bf16 peak for MFU (default: the table)")
    parser.add_argument("--threads", type=int, default=None, help="torch threads on CPU (default 1)")
    args = parser.parse_args(argv)
    if args.device == "cpu":
        os.environ["CUDA_VISIBLE_DEVICES"] = ""  # before torch sees a GPU: the loop then trains on the CPU
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    os.environ.setdefault("TQDM_DISABLE", "1")
    sys.path[:0] = [str(ROOT), str(ROOT / "scripts")]
    import torch

    if args.device == "cuda" and not torch.cuda.is_available():
        print(json.dumps({"schema": SCHEMA, "passed": False, "error": "no CUDA device here; on a CPU run "
                          "`python scripts/gpu_check.py --device cpu --quick`"}))
        return 2
    if args.device == "cpu":
        torch.set_num_threads(args.threads or 1)
    warnings.filterwarnings("ignore", category=DeprecationWarning)
    mode = "quick" if args.quick else "full"
    started, stamp = time.perf_counter(), datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")
    device = _device_info(args.device, args.peak_tflops)
    slug = "cpu" if args.device == "cpu" else "".join(c if c.isalnum() else "-" for c in device["name"].lower())
    out = Path(args.out or ROOT / "benchmarks" / f"gpu_check-{slug}-{mode}.json")
    report = {"schema": SCHEMA, "passed": None, "mode": mode, "device": device, "size": SIZES[args.device],
              "command": shlex.join(["python", "scripts/gpu_check.py", *(argv if argv is not None else sys.argv[1:])]),
              "started_utc": stamp, "wall_s": None, "load_average": os.getloadavg(), "checks": {}}
    with contextlib.ExitStack() as stack:
        work = Path(args.work_dir) if args.work_dir else Path(stack.enter_context(
            tempfile.TemporaryDirectory(prefix="gpu_check_")))
        ctx = Context(args.device, args.quick, work, args.backend or ("inductor" if args.device == "cuda"
                                                                     else "aot_eager"),
                      device["bf16_peak_tflops"], SIZES[args.device])
        for name in (n for n in CHECK_NAMES if n in args.only):
            log(f"{name} ...")
            check, t0, error = Check(), time.perf_counter(), None
            try:
                with contextlib.redirect_stdout(sys.stderr):  # stdout holds the JSON alone
                    CHECKS[name](ctx, check)
            except Exception:  # a failing path is reported and the next check still runs
                error = traceback.format_exc(limit=8)[-4000:]
            report["checks"][name] = check.result(time.perf_counter() - t0, error)
            log(f"{name}: {report['checks'][name]['status']}"
                + (f": {check.skipped}" if check.skipped else "")
                + (f" ({error.strip().splitlines()[-1]})" if error else ""))
            report["wall_s"] = round(time.perf_counter() - started, 1)
            report["passed"] = all(c["status"] != "failed" for c in report["checks"].values())
            out.parent.mkdir(parents=True, exist_ok=True)
            out.write_text(json.dumps(report, indent=1, default=str) + "\n")
    print(json.dumps(report, default=str))
    return 0 if report["passed"] else 1


if __name__ == "__main__":
    raise SystemExit(main())
