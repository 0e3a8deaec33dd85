"""Pretraining beyond GPT-2: configs/llama-8l-tiny.yaml through the same loop, with Q/K/V recording."""

from pathlib import Path

import pytest
import torch
from transformers import AutoModelForCausalLM

from hf_varinit.cli.pretrain import parse_options
from hf_varinit.record.stats_file import load_stats
from hf_varinit.train.loop import run_pretrain

CONFIG = str(Path(__file__).resolve().parents[1] / "hf_varinit" / "configs" / "llama-8l-tiny.yaml")


def test_llama_config_pretrains_and_records_grouped_query_qkv(tmp_path):
    options = parse_options([
        "--config", CONFIG, "--output-dir", str(tmp_path / "run"), "--cache-dir", str(tmp_path / "cache"),
        "--n-layer", "2", "--n-embd", "32", "--n-head", "4", "--n-kv-heads", "2", "--intermediate-size", "64",
        "--block-size", "32", "--vocab-size", "512", "--max-chars", "200000", "--max-steps", "4",
        "--batch-size", "4", "--warmup-steps", "1", "--record-every", "2", "--eval-every", "none",
        "--checkpoint-every", "none",
    ])
    result = run_pretrain(options)
    stats = load_stats(result.stats_path)
    assert stats.model_type == "llama" and stats.step.tolist() == [0, 2, 4]
    k = stats.tracked[stats.index("layers.1.k")]
    assert (k["fan_in"], k["fan_out"]) == (32, 16)  # 2 kv heads x head_dim 8
    model = AutoModelForCausalLM.from_pretrained(result.final_dir)
    weight = model.model.layers[1].self_attn.k_proj.weight.detach()
    var, _ = torch.var_mean(weight, correction=0)
    assert stats.series("layers.1.k", "var")[-1] == pytest.approx(var.item(), rel=1e-5)
