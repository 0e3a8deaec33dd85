"""Check the statistics on a real FSDP2 run: sharded statistics == statistics of the gathered weights.

Launch with 2 (or more) CPU processes, gloo:

    MASTER_ADDR=127.0.0.1 python -m torch.distributed.run --nproc_per_node 2 scripts/fsdp_check.py --out DIR
    MASTER_ADDR=127.0.0.1 python -m torch.distributed.run --nproc_per_node 2 scripts/fsdp_check.py --out DIR \
        --check callback

``--check moments`` (the default):

For a tiny GPT-2 (odd vocab: uneven ``wte`` shards; ``c_attn`` Q/K/V column slices and row-sliced bias)
and a tiny GPT-NeoX (interleaved Q/K/V whose per-head blocks straddle the shard boundary), it wraps every
block and the root in ``fully_shard``, takes one AdamW step, then compares `moments.var_mean` over every
role entry (tracked weights, biases, norms) with float64 ``var_mean`` of ``full_tensor()`` weights.
Each rank writes ``DIR/rank{r}.json``; rank 0 prints a summary. Exit status 1 if any entry is off.

``--check callback``: `VarianceCallback` on a ``fully_shard`` GPT-2, its hooks called on every rank in the order
and with the arguments `transformers.Trainer` uses (real `TrainingArguments`, `TrainerState`, `TrainerControl`;
the Trainer itself would wrap the sharded model in DDP on CPU), 4 AdamW steps, a checkpoint at step 2. Each
rank writes ``DIR/callback_rank{r}.json``: its records, how often it wrote a file, and the statistics of the
gathered final weights; the callback writes ``DIR/trainer/variance.safetensors``.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch  # noqa: E402
import torch.distributed as dist  # noqa: E402
from torch.distributed.fsdp import fully_shard  # noqa: E402
from torch.distributed.tensor import DTensor  # noqa: E402
from transformers import (  # noqa: E402
    GPT2Config,
    GPT2LMHeadModel,
    GPTNeoXConfig,
    GPTNeoXForCausalLM,
    TrainerControl,
    TrainerState,
    TrainingArguments,
)

from hf_varinit import from_config  # noqa: E402
from hf_varinit.init.roles import get_roles, iter_roles  # noqa: E402
from hf_varinit.record.callback import VarianceCallback  # noqa: E402
from hf_varinit.record.moments import is_sharded, rebind, var_mean  # noqa: E402
from hf_varinit.record.recorder import VarianceRecorder  # noqa: E402

VOCAB = 101  # odd: the embedding's rows do not split evenly over 2 ranks


def build(name: str) -> tuple[torch.nn.Module, list, dict]:
    """The sharded model, its roles (taken before sharding) and facts about the sharding."""
    torch.manual_seed(0)
    if name == "gpt2":
        config = GPT2Config(n_layer=2, n_embd=32, n_head=4, vocab_size=VOCAB, n_positions=16, bos_token_id=0,
                            eos_token_id=0)
        model = GPT2LMHeadModel(config)
        blocks = model.transformer.h
    else:  # 5 heads of 8: the 120 fused rows split 60/60, mid-head
        config = GPTNeoXConfig(hidden_size=40, num_attention_heads=5, num_hidden_layers=2, intermediate_size=80,
                               vocab_size=VOCAB, max_position_embeddings=16, bos_token_id=0, eos_token_id=0)
        model = GPTNeoXForCausalLM(config)
        blocks = model.gpt_neox.layers
    roles = get_roles(model)
    before = {name: id(p) for name, p in model.named_parameters()}
    for block in blocks:
        fully_shard(block)
    fully_shard(model)
    info = {"params_replaced": any(id(p) != before[name] for name, p in model.named_parameters())}
    try:  # roles straight from the sharded model (Slice.view on a DTensor)
        list(iter_roles(model))
        info["iter_roles_after_shard"] = "ok"
    except Exception as exc:  # noqa: BLE001 - recorded, not fatal: the roles are taken before sharding
        info["iter_roles_after_shard"] = f"{type(exc).__name__}: {str(exc).splitlines()[0]}"
    return model, roles, info


def train_step(model: torch.nn.Module, opt: torch.optim.Optimizer | None = None) -> float:
    opt = opt or torch.optim.AdamW(model.parameters(), lr=1e-2)
    torch.manual_seed(1 + dist.get_rank())  # different data per rank, as in real data-parallel training
    ids = torch.randint(0, VOCAB, (2, 12))
    loss = model(input_ids=ids, labels=ids).loss
    loss.backward()
    opt.step()
    opt.zero_grad()
    return float(loss.detach())


@torch.no_grad()
def reference(entries) -> torch.Tensor:
    """float64 [var, mean] of every entry's slice of the gathered full weight."""
    rows = []
    for entry, param in entries:
        full = param.full_tensor() if isinstance(param, DTensor) else param.detach()
        var, mean = torch.var_mean(entry.view(full).double(), correction=0)
        rows.append(torch.stack([var, mean]))
    return torch.stack(rows)


def count_all_reduce(fn, *args):
    calls = []
    original = dist.all_reduce

    def counting(*a, **k):
        calls.append(1)
        return original(*a, **k)

    dist.all_reduce = counting
    try:
        return fn(*args), len(calls)
    finally:
        dist.all_reduce = original


def check(name: str) -> dict:
    model, roles, info = build(name)
    loss = train_step(model)
    entries = rebind(roles, model)
    stats, n_reduce = count_all_reduce(var_mean, entries)
    ref = reference(entries)
    rel = ((stats.double() - ref).abs() / ref.abs().clamp_min(1e-30)).where(ref != 0, stats.double().abs())
    shards = {}
    for entry, param in entries:
        if isinstance(param, DTensor) and entry.name not in shards:
            shards[entry.name] = [str(param.placements), list(param.shape), list(param.to_local().shape)]
    return {
        **info,
        "loss": loss,
        "is_sharded": is_sharded(entries),
        "all_reduce_calls": n_reduce,
        "keys": [e.key for e, _ in entries],
        "slices": [str(e.slice) if e.slice is not None else None for e, _ in entries],
        "tracked": [e.tracked for e, _ in entries],
        "sharded": stats.tolist(),
        "reference": ref.tolist(),
        "max_rel_err": float(rel.max()),
        "shards": shards,
    }


def check_callback(out: Path, steps: int = 4, save_at: int = 2) -> dict:
    """Drive `VarianceCallback` through a sharded run as `Trainer` would; return this rank's view of it."""
    config = GPT2Config(n_layer=2, n_embd=32, n_head=4, vocab_size=VOCAB, n_positions=16, bos_token_id=0,
                        eos_token_id=0)
    model = from_config(config, "gpt2", seed=0)
    init = VarianceRecorder(model).compute().tolist()  # the unsharded init, the same on every rank
    for block in model.transformer.h:
        fully_shard(block)
    fully_shard(model)
    args = TrainingArguments(output_dir=str(out / "trainer"), max_steps=steps, per_device_train_batch_size=2,
                             use_cpu=True, report_to=[], save_steps=save_at, disable_tqdm=True, seed=0)
    state, control = TrainerState(max_steps=steps), TrainerControl()
    state.is_world_process_zero, state.is_local_process_zero = args.process_index == 0, args.local_process_index == 0
    writes = []  # the files this rank writes: every `VarianceRecorder.save` call is counted
    original_save = VarianceRecorder.save

    def counted_save(self, path, *rest, **kwargs):
        writes.append(str(path))
        return original_save(self, path, *rest, **kwargs)

    VarianceRecorder.save = counted_save
    callback = VarianceCallback(every=2)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2)
    callback.on_train_begin(args, state, control, model=model)
    for _ in range(steps):
        callback.on_step_begin(args, state, control)
        train_step(model, optimizer)
        state.global_step += 1
        callback.on_step_end(args, state, control)
        if state.global_step % save_at == 0:
            (out / "trainer" / f"checkpoint-{state.global_step}").mkdir(parents=True, exist_ok=True)
            callback.on_save(args, state, control)
    callback.on_train_end(args, state, control)
    VarianceRecorder.save = original_save
    entries = callback.recorder.entries if callback.recorder is not None else rebind(
        [e for e, _ in VarianceRecorder(model).entries], model)
    return {"rank": dist.get_rank(), "world_size": dist.get_world_size(), "writes": writes,
            "records": callback.recorder.arrays()["var"].tolist() if callback.recorder else None,
            "steps": callback.recorder.steps if callback.recorder else None, "init": init,
            "keys": [e.key for e, _ in entries], "is_sharded": is_sharded(entries),
            "reference": reference(entries).tolist()}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", required=True, help="folder for rank{r}.json")
    parser.add_argument("--tol", type=float, default=1e-6, help="relative tolerance")
    parser.add_argument("--check", choices=("moments", "callback"), default="moments")
    args = parser.parse_args()
    dist.init_process_group("gloo")
    rank = dist.get_rank()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    try:
        if args.check == "callback":
            result = check_callback(out)
        else:
            result = {"world_size": dist.get_world_size(), "models": {n: check(n) for n in ("gpt2", "gpt_neox")}}
        dist.barrier()  # no rank tears gloo down while another still has work in flight
    finally:
        dist.destroy_process_group()
    if args.check == "callback":
        (out / f"callback_rank{rank}.json").write_text(json.dumps(result))
        return 0
    (out / f"rank{rank}.json").write_text(json.dumps(result))
    ok = all(m["max_rel_err"] <= args.tol and m["all_reduce_calls"] == 1 for m in result["models"].values())
    if rank == 0:
        for name, m in result["models"].items():
            print(f"{name}: {len(m['keys'])} entries, all_reduce calls {m['all_reduce_calls']}, "
                  f"max rel err {m['max_rel_err']:.2e}, loss {m['loss']:.4f}")
        print("OK" if ok else "MISMATCH")
    return 0 if ok else 1


if __name__ == "__main__":
    code = main()
    sys.stdout.flush()
    sys.stderr.flush()
    # Skip interpreter teardown: gloo's worker threads can abort the process while being destroyed there
    # ("terminate called without an active exception") after all the work is done and written.
    os._exit(code)
