"""The library's test fixtures: tiny seeded models (the offline set-up is the repository's conftest.py)."""

import pytest
from transformers import GPT2Config


@pytest.fixture
def gpt2_config():
    """A GPT-2 config wide enough for std estimates (n_embd 256), shallow and small-vocab to stay fast."""
    return GPT2Config(n_layer=2, n_embd=256, n_head=4, vocab_size=1000, n_positions=64, bos_token_id=0, eos_token_id=0)


@pytest.fixture
def tiny_gpt2_config():
    return GPT2Config(n_layer=2, n_embd=32, n_head=4, vocab_size=128, n_positions=32, bos_token_id=0, eos_token_id=0)
