"""Shared test set-up: offline hub, few threads, tiny seeded models."""

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("MPLBACKEND", "Agg")

import pytest  # noqa: E402
import torch  # noqa: E402
from transformers import GPT2Config  # noqa: E402


@pytest.fixture
def gpt2_config():
    """A GPT-2 config wide enough for std estimates (n_embd 256), shallow and small-vocab to stay fast."""
    return GPT2Config(n_layer=2, n_embd=256, n_head=4, vocab_size=1000, n_positions=64, bos_token_id=0, eos_token_id=0)


@pytest.fixture
def tiny_gpt2_config():
    return GPT2Config(n_layer=2, n_embd=32, n_head=4, vocab_size=128, n_positions=32, bos_token_id=0, eos_token_id=0)


@pytest.fixture(scope="module")
def one_torch_thread():
    """Tiny MLPs run fastest, and least disturbed by a busy machine, on one torch thread."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)
