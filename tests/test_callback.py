"""`VarianceCallback` inside a `transformers.Trainer` run (2-layer GPT-2, random tokens, CPU)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from transformers import GPT2Config, Trainer, TrainingArguments

from hf_varinit import from_config
from hf_varinit.record.callback import VarianceCallback
from hf_varinit.record.stats_file import load_stats


class RandomTokens(torch.utils.data.Dataset):
    def __init__(self, n: int = 64, length: int = 16, vocab: int = 64):
        self.ids = torch.randint(0, vocab, (n, length), generator=torch.Generator().manual_seed(0))

    def __len__(self):
        return len(self.ids)

    def __getitem__(self, i):
        return {"input_ids": self.ids[i], "labels": self.ids[i]}


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    out = tmp_path_factory.mktemp("trainer")
    model = from_config(GPT2Config(n_layer=2, n_embd=32, n_head=4, vocab_size=64, n_positions=16), "gpt2", seed=0)
    args = TrainingArguments(output_dir=str(out), max_steps=5, per_device_train_batch_size=4, learning_rate=1e-3,
                             save_steps=3, logging_steps=1, report_to=[], use_cpu=True, disable_tqdm=True, seed=0)
    trainer = Trainer(model=model, args=args, train_dataset=RandomTokens(), callbacks=[VarianceCallback(every=2)])
    trainer.train()
    return out, trainer


def test_callback_writes_a_loadable_file_with_steps_0_and_last(trained):
    out, trainer = trained
    stats = load_stats(out)
    assert stats.step.tolist() == [0, 2, 4, 5]
    assert stats.metadata["source"] == "trainer" and stats.rule == "gpt2"
    assert set(stats.metadata["versions"]) == {"torch", "transformers", "accelerate", "hf_varinit"}
    assert np.isfinite(stats.var).all()


def test_callback_statistics_match_the_final_weights(trained):
    out, trainer = trained
    stats = load_stats(out)
    w = trainer.model.transformer.h[1].attn.c_attn.weight.detach()
    var, mean = torch.var_mean(w[:, 32:64], correction=0)  # K block of layer 1
    j = stats.index("layers.1.k")
    assert stats.var[-1, j] == pytest.approx(var.item(), rel=1e-6)
    assert stats.mean[-1, j] == pytest.approx(mean.item(), rel=1e-5, abs=1e-9)


def test_callback_writes_into_each_checkpoint(trained):
    out, _ = trained
    assert load_stats(out / "checkpoint-3").step.tolist() == [0, 2]


def test_resumed_trainer_continues_the_checkpoints_record(trained, tmp_path):
    out, _ = trained
    full = load_stats(out)
    model = from_config(GPT2Config(n_layer=2, n_embd=32, n_head=4, vocab_size=64, n_positions=16), "gpt2", seed=0)
    args = TrainingArguments(output_dir=str(out), max_steps=5, per_device_train_batch_size=4, learning_rate=1e-3,
                             save_steps=3, logging_steps=1, report_to=[], use_cpu=True, disable_tqdm=True, seed=0)
    trainer = Trainer(model=model, args=args, train_dataset=RandomTokens(), callbacks=[VarianceCallback(every=2)])
    trainer.train(resume_from_checkpoint=str(out / "checkpoint-3"))
    resumed = load_stats(out)
    assert resumed.step.tolist() == [0, 2, 4, 5]  # as the uninterrupted run: no duplicate, none missing
    np.testing.assert_array_equal(resumed.var[:2], full.var[:2])  # the steps before the checkpoint, kept
    np.testing.assert_allclose(resumed.var[-1], full.var[-1], rtol=1e-5)
