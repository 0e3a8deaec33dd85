"""Wall time to build GPT-2 124M (12 layers, n_embd 768) from a config under each built-in rule.

Usage:
    python scripts/bench_init.py [--repeats 5]

Prints the median of ``--repeats`` builds per rule and its ratio to the HF default (``hf``).
Rules are interleaved round by round so drift in machine load affects all of them alike.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
from transformers import GPT2Config

import hf_varinit as hv
from hf_varinit.init.roles import tracked_roles

RULES = ["hf", "normal:std=0.02", "trunc_normal:std=0.02", "xavier", "xavier:dist=uniform", "kaiming",
         "kaiming:mode=fan_out", "lecun", "gpt2", "optimal:fallback=kaiming"]


def optimal_table(config: GPT2Config) -> dict:
    """A per-slice V(W) table for every tracked tensor (the optimal rule's work at full size)."""
    with torch.device("meta"):
        model = hv.from_config(config, "hf")
    return {e.key: 4e-4 for e, _ in tracked_roles(model)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    config = GPT2Config(n_layer=12, n_embd=768, n_head=12)
    table = optimal_table(config)
    specs = {r: ({"name": "optimal", "variances": table} if r.startswith("optimal") else r) for r in RULES}
    times: dict[str, list[float]] = {r: [] for r in RULES}
    hv.from_config(config, "hf", seed=0)  # warm-up
    for _ in range(args.repeats):
        for rule in RULES:
            start = time.perf_counter()
            hv.from_config(config, specs[rule], seed=0)
            times[rule].append(time.perf_counter() - start)
    base = statistics.median(times["hf"])
    print(f"GPT-2 124M from_config, median of {args.repeats}, torch {torch.__version__}, "
          f"{torch.get_num_threads()} threads")
    print("| rule | median s | ratio to hf |\n|---|---|---|")
    for rule in RULES:
        med = statistics.median(times[rule])
        print(f"| {rule} | {med:.3f} | {med / base:.3f} |")


if __name__ == "__main__":
    main()
