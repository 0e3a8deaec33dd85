"""Specification of hf_varinit.train.data: corpora, tokenizers, packing (all offline). The lab's classification sets:
experiments/tests/test_datasets.py."""

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")

import json

import pytest
import torch

from hf_varinit.errors import DataError
from hf_varinit.train.data import (
    build_lm_datasets,
    get_tokenizer,
    load_text_corpus,
    pack_dataset,
    train_tokenizer,
)

SMALL = 200_000
SNIPPET = 'def f(x: int) -> str:\n    """Doc — ünïcode."""\n    return f"{x!r:>8}"  # comment\n\n\tpass\n'


@pytest.fixture(scope="module")
def corpus():
    return load_text_corpus(max_chars=SMALL, seed=0)


@pytest.fixture(scope="module")
def tokenizer(corpus, tmp_path_factory):
    return train_tokenizer(corpus["train"]["text"], vocab_size=512, cache_dir=tmp_path_factory.mktemp("tok"))


def test_stdlib_corpus_is_nonempty_capped_with_disjoint_splits(corpus):
    train, val = list(corpus["train"]["text"]), list(corpus["validation"]["text"])
    assert corpus["train"].column_names == ["text"] and corpus["validation"].column_names == ["text"]
    assert train and val and all(t.strip() for t in train + val)
    assert not set(train) & set(val)
    assert sum(map(len, train + val)) <= SMALL


def test_stdlib_corpus_split_is_deterministic_given_seed(corpus):
    again = load_text_corpus(max_chars=SMALL, seed=0)
    other = load_text_corpus(max_chars=SMALL, seed=1)
    assert list(again["validation"]["text"]) == list(corpus["validation"]["text"])
    assert list(other["validation"]["text"]) != list(corpus["validation"]["text"])


def test_local_txt_file_loads_one_document_per_paragraph(tmp_path):
    path = tmp_path / "corpus.txt"
    path.write_text("\n\n".join(f"paragraph {i}\nsecond line {i}" for i in range(20)))
    dd = load_text_corpus(str(path), cache_dir=tmp_path / "cache", validation_fraction=0.1)
    assert (len(dd["train"]), len(dd["validation"])) == (18, 2)
    assert dd["train"][0]["text"].startswith("paragraph")


def test_local_jsonl_file_loads_the_text_column(tmp_path):
    path = tmp_path / "corpus.jsonl"
    path.write_text("".join(json.dumps({"id": i, "body": f"document {i}"}) + "\n" for i in range(10)))
    dd = load_text_corpus(str(path), text_column="body", cache_dir=tmp_path / "cache")
    assert dd["train"].column_names == ["text"]
    assert len(dd["train"]) + len(dd["validation"]) == 10


def test_jsonl_without_the_text_column_lists_available_columns(tmp_path):
    path = tmp_path / "corpus.jsonl"
    path.write_text("".join(json.dumps({"body": f"document {i}"}) + "\n" for i in range(4)))
    with pytest.raises(DataError, match="body"):
        load_text_corpus(str(path), cache_dir=tmp_path / "cache")


def test_local_directory_loads_one_document_per_file(tmp_path):
    for i in range(5):
        (tmp_path / f"doc{i}.md").write_text(f"# title {i}\n")
    (tmp_path / "ignored.bin").write_bytes(b"\x00\x01")
    dd = load_text_corpus(str(tmp_path))
    assert len(dd["train"]) + len(dd["validation"]) == 5


def test_missing_path_raises_data_error_naming_it(tmp_path):
    missing = str(tmp_path / "nope.txt")
    with pytest.raises(DataError, match=r"nope\.txt"):
        load_text_corpus(missing)


def test_empty_file_raises_data_error(tmp_path):
    path = tmp_path / "empty.txt"
    path.write_text("")
    with pytest.raises(DataError, match="is empty"):
        load_text_corpus(str(path))


def test_tokenizer_round_trips_python_source(tokenizer):
    ids = tokenizer(SNIPPET, add_special_tokens=False)["input_ids"]
    assert tokenizer.decode(ids) == SNIPPET
    assert tokenizer.eos_token == tokenizer.pad_token == "<|endoftext|>"
    assert len(tokenizer) <= 512


def test_tokenizer_training_is_deterministic(corpus):
    texts = list(corpus["train"]["text"])[:20]
    first, second = train_tokenizer(texts, vocab_size=400), train_tokenizer(texts, vocab_size=400)
    assert first.get_vocab() == second.get_vocab()


def test_tokenizer_second_call_loads_from_cache(corpus, tmp_path):
    texts = list(corpus["train"]["text"])[:20]
    first = train_tokenizer(texts, vocab_size=400, cache_dir=tmp_path)
    (cached,) = tmp_path.glob("*/tokenizer.json")
    os.utime(cached, ns=(1_000_000_000, 1_000_000_000))  # a retrain would rewrite it and reset mtime
    second = train_tokenizer(texts, vocab_size=400, cache_dir=tmp_path)
    assert cached.stat().st_mtime_ns == 1_000_000_000
    assert list(tmp_path.glob("*/tokenizer.json")) == [cached]
    assert second.get_vocab() == first.get_vocab()


def test_pack_gives_int64_blocks_of_exactly_block_size(corpus, tokenizer):
    packed = pack_dataset(corpus["train"], tokenizer, block_size=64)
    assert packed.column_names == ["input_ids"] and len(packed) > 10
    batch = packed[:3]["input_ids"]
    assert batch.shape == (3, 64) and batch.dtype == torch.int64
    assert (packed[:]["input_ids"] == tokenizer.eos_token_id).any()  # documents are separated


def test_pack_too_short_corpus_names_token_count(corpus, tokenizer):
    tiny = corpus["train"].select([0]).map(lambda r: {"text": "x = 1"})
    with pytest.raises(DataError, match=r"only \d+ tokens.*block_size=4096"):
        pack_dataset(tiny, tokenizer, block_size=4096)


def test_pack_rejects_block_size_below_two(corpus, tokenizer):
    with pytest.raises(DataError, match="block_size"):
        pack_dataset(corpus["train"], tokenizer, block_size=1)


def test_build_lm_datasets_packs_both_splits(tmp_path):
    data = build_lm_datasets(block_size=64, max_chars=SMALL, vocab_size=512, cache_dir=tmp_path)
    assert data.source.startswith("python-stdlib")
    assert data.num_train_tokens == len(data.train) * 64 > 0
    assert len(data.validation) >= 1 and data.validation[0]["input_ids"].shape == (64,)


def test_build_lm_datasets_with_too_small_validation_explains_fix(tmp_path):
    for i in range(40):  # 38 train documents, 2 short validation documents
        (tmp_path / f"doc{i:02}.txt").write_text(f"def function_{i}(x):\n    return x * {i} + {i * i}\n")
    with pytest.raises(DataError, match="validation_fraction"):
        build_lm_datasets(str(tmp_path), block_size=256, vocab_size=300, cache_dir=tmp_path / "cache")


def test_unreachable_hub_dataset_raises_data_error_offline():
    with pytest.raises(DataError, match="not a local path"):
        load_text_corpus("no-such-dataset-xyz")


def test_saved_tokenizer_reloads_through_get_tokenizer(tokenizer, tmp_path):
    tokenizer.save_pretrained(tmp_path)
    again = get_tokenizer(str(tmp_path))
    assert again.get_vocab() == tokenizer.get_vocab() and again.pad_token == "<|endoftext|>"
    assert again.decode(again(SNIPPET, add_special_tokens=False)["input_ids"]) == SNIPPET
