"""Pretrain a GPT-2 / Llama with Accelerate and record per-layer Q/K/V weight variance.

    python scripts/pretrain.py --config configs/gpt2-12l-tiny.yaml --output-dir runs/tiny
    accelerate launch --multi_gpu --num_processes 2 scripts/pretrain.py --config configs/gpt2-12l-tiny.yaml

See `hf_varinit.train` for every option (`python scripts/pretrain.py --help`).
"""

from hf_varinit.train import main

if __name__ == "__main__":
    raise SystemExit(main())
