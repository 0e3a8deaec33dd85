"""Seconds and peak memory to build a variance report from a checkpoint of a few hundred MB.

Usage:
    python scripts/bench_report.py [--n-layer 12] [--n-embd 768] [--shard 100MB]

Saves a GPT-2 (124M by default, ~500 MB in float32, sharded) with ``save_pretrained``, then, in a fresh
subprocess so the peak resident memory is the report's alone, runs ``stats_from_checkpoint`` and writes
the report folder. Prints the wall time, the peak RSS of that process, the tracemalloc peak of the
tensor reads, and the checkpoint's size and largest tensor for comparison.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
import tracemalloc
from pathlib import Path


def measure(checkpoint: str, output: str) -> dict:
    """Runs in the child process: report the checkpoint, return timings and memory."""
    import hf_varinit as hv
    from hf_varinit.record.from_checkpoint import stats_from_checkpoint

    rss_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    start = time.perf_counter()
    tracemalloc.start()
    stats = stats_from_checkpoint(checkpoint)
    _, traced_peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    read_s = time.perf_counter() - start
    hv.VarianceReport.from_stats(stats).save(output)
    return {"read_seconds": read_s, "total_seconds": time.perf_counter() - start,
            "tracemalloc_peak_mb": traced_peak / 2**20, "rss_before_mb": rss_before / 1024,
            "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, "tracked": len(stats.keys)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--n-layer", type=int, default=12)
    parser.add_argument("--n-embd", type=int, default=768)
    parser.add_argument("--shard", default="100MB", help="max_shard_size of save_pretrained")
    parser.add_argument("--child", nargs=2, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(measure(*args.child)))
        return
    from transformers import GPT2Config

    import hf_varinit as hv

    with tempfile.TemporaryDirectory() as tmp:
        config = GPT2Config(n_layer=args.n_layer, n_embd=args.n_embd, n_head=max(1, args.n_embd // 64))
        model = hv.from_config(config, "gpt2", seed=0)
        largest = max(p.numel() * 4 for p in model.parameters())
        model.save_pretrained(tmp, max_shard_size=args.shard)
        del model
        size = sum(f.stat().st_size for f in Path(tmp).glob("*.safetensors"))
        out = subprocess.run([sys.executable, __file__, "--child", tmp, str(Path(tmp) / "report")],
                             check=True, capture_output=True, text=True)
        result = json.loads(out.stdout.strip().splitlines()[-1])
    print(f"checkpoint: GPT-2 {args.n_layer} layers, n_embd {args.n_embd}: {size / 2**20:.0f} MB in "
          f"{args.shard} shards; largest tensor {largest / 2**20:.0f} MB; {result['tracked']} tracked tensors")
    print(f"read + stats: {result['read_seconds']:.2f} s; with report (card, JSON, plots): "
          f"{result['total_seconds']:.2f} s")
    print(f"peak RSS of the report process: {result['peak_rss_mb']:.0f} MB (after imports: "
          f"{result['rss_before_mb']:.0f} MB); tracemalloc peak of the reads: {result['tracemalloc_peak_mb']:.0f} MB")


if __name__ == "__main__":
    main()
