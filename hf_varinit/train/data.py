"""Text corpora for pretraining: loading, a byte-level BPE tokenizer, packing into blocks.

Offline by default: the corpus is the running interpreter's own standard library. Local text / jsonl
files and hub datasets and tokenizers work too. (The classification sets of the MLP studies are in
the lab's `hf_varinit_lab.datasets`, in experiments/.)
"""

from __future__ import annotations

import hashlib
import os
import platform
import sysconfig
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

import datasets
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import transformers
from datasets.table import InMemoryTable
from filelock import FileLock
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

from hf_varinit.errors import DataError
from hf_varinit.io_utils import atomic_path

EOS_TOKEN = "<|endoftext|>"
_TEXT_SUFFIXES = (".txt", ".md", ".py")
_JSON_SUFFIXES = (".jsonl", ".json")
_STDLIB_SKIP_DIRS = {"site-packages", "dist-packages", "test", "tests", "idlelib", "__pycache__"}
_TOKENIZER_RECIPE = "bytelevel-bpe-v1"  # part of the cache key: bump when train_tokenizer changes


# ----------------------------------------------------------------------------- text corpora


def _read_files(root: Path, suffixes: tuple[str, ...], skip_dirs: set[str]) -> Iterator[str]:
    """Texts of the files under `root`, lazily in sorted order; skips unreadable, non-utf8, blank files."""
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = sorted(d for d in dirnames if d not in skip_dirs)
        for name in sorted(n for n in filenames if n.endswith(suffixes)):
            try:
                text = (Path(dirpath) / name).read_text(encoding="utf-8")
            except (OSError, UnicodeDecodeError):
                continue
            if text.strip():
                yield text


def _first_within(texts: Iterable[str], max_chars: int | None) -> list[str]:
    """Whole texts, first-come, while the total stays within `max_chars` (a longer first one is truncated)."""
    kept, total = [], 0
    for text in texts:
        if max_chars is not None and total + len(text) > max_chars:
            return kept or [text[:max_chars]]
        kept.append(text)
        total += len(text)
    return kept


def _cap_chars(ds: datasets.Dataset, max_chars: int | None) -> datasets.Dataset:
    if max_chars is None:
        return ds
    texts = (text for batch in ds.iter(batch_size=1000) for text in batch["text"])
    return datasets.Dataset.from_dict({"text": _first_within(texts, max_chars)})


def _pick_text(ds: datasets.Dataset, text_column: str, what: str) -> datasets.Dataset:
    """Reduce `ds` to one non-empty string column named "text"."""
    if text_column not in ds.column_names:
        raise DataError(
            f"{what} has no column {text_column!r}; available columns: {ds.column_names}. "
            f"Pass text_column= (--text-column) naming one of them."
        )
    ds = ds.select_columns([text_column])
    if text_column != "text":
        ds = ds.rename_column(text_column, "text")
    return ds.filter(lambda b: [bool(t and t.strip()) for t in b["text"]], batched=True)


def _looks_like_path(source: str) -> bool:
    # Hub ids are "name" or "owner/name": anything rooted, relative, deeper or with a file suffix is a path.
    return (
        source.startswith(("/", ".", "~"))
        or source.count("/") > 1
        or (os.altsep is not None and os.altsep in source)
        or (os.sep != "/" and os.sep in source)
        or source.lower().endswith(_TEXT_SUFFIXES + _JSON_SUFFIXES)
    )


def _split(ds: datasets.Dataset, fraction: float, seed: int, what: str) -> datasets.DatasetDict:
    """Split by document: a seeded permutation picks the validation documents; both keep source order."""
    n = len(ds)
    if n < 2:
        raise DataError(
            f"{what} has only {n} document; a train/validation split by document needs at least 2. "
            f"Add documents (or blank-line-separated paragraphs) or raise max_chars."
        )
    n_val = min(n - 1, max(1, round(n * fraction)))
    perm = np.random.default_rng(seed).permutation(n)
    val_idx, train_idx = np.sort(perm[:n_val]), np.sort(perm[n_val:])
    return datasets.DatasetDict(train=ds.select(train_idx), validation=ds.select(val_idx))


def _load_corpus(source, text_column, validation_fraction, max_chars, seed, cache_dir):
    """Like `load_text_corpus`, also returning a human description of the source."""
    if not 0.0 < validation_fraction < 1.0:
        raise DataError(f"validation_fraction must lie in (0, 1), got {validation_fraction}.")
    if max_chars is not None and max_chars < 1:
        raise DataError(f"max_chars must be a positive integer or None, got {max_chars}.")
    cache = None if cache_dir is None else str(cache_dir)

    if source is None or source == "stdlib":
        root = Path(sysconfig.get_paths()["stdlib"])
        docs = _first_within(_read_files(root, (".py",), _STDLIB_SKIP_DIRS), max_chars)
        what = f"python-stdlib ({platform.python_version()}, {len(docs)} files)"
        ds = datasets.Dataset.from_dict({"text": docs})
    elif os.path.exists(os.path.expanduser(source)):
        path = Path(source).expanduser()
        if path.is_dir():
            docs = _first_within(_read_files(path, _TEXT_SUFFIXES, {"__pycache__"}), max_chars)
            what = f"directory {path} ({len(docs)} files)"
            ds = datasets.Dataset.from_dict({"text": docs})
        else:
            what = f"file {path}"
            if path.stat().st_size == 0:
                raise DataError(f"{what} is empty; give a file with some text.")
            column = text_column
            if path.suffix.lower() in _JSON_SUFFIXES:
                ds = datasets.load_dataset("json", data_files=str(path), split="train", cache_dir=cache)
            else:  # plain text: one document per blank-line-separated paragraph
                ds = datasets.load_dataset(
                    "text", data_files=str(path), sample_by="paragraph", split="train", cache_dir=cache
                )
                column = "text"
            ds = _cap_chars(_pick_text(ds, column, what), max_chars)
            what = f"{what} ({len(ds)} documents)"
    elif _looks_like_path(source):
        raise DataError(f"text corpus path {source!r} does not exist; give an existing file or directory.")
    else:
        name, _, config = source.partition(":")
        what = f"hub:{source}"
        try:
            dd = datasets.load_dataset(name, config or None, cache_dir=cache)
        except Exception as e:  # network, missing repo, offline mode: all surface as one DataError
            raise DataError(
                f"{source!r} is not a local path and could not be loaded as a hub dataset ({e}). "
                f"Offline, use source=None (the Python standard library) or a local .txt/.jsonl file."
            ) from e
        train_name = "train" if "train" in dd else next(iter(dd))
        ds = _cap_chars(_pick_text(dd[train_name], text_column, what), max_chars)
        if "validation" in dd and len(ds) > 0:
            val_cap = None if max_chars is None else max(1, int(max_chars * validation_fraction))
            validation = _cap_chars(_pick_text(dd["validation"], text_column, what), val_cap)
            return datasets.DatasetDict(train=ds, validation=validation), what

    if len(ds) == 0:
        raise DataError(f"{what} is empty; give a source with some non-blank text.")
    return _split(ds, validation_fraction, seed, what), what


def load_text_corpus(
    source: str | None = None,
    *,
    text_column: str = "text",
    validation_fraction: float = 0.05,
    max_chars: int | None = None,
    seed: int = 0,
    cache_dir: str | os.PathLike | None = None,
) -> datasets.DatasetDict:
    """Load a text corpus as a `DatasetDict` with "train" and "validation" splits of one column "text".

    Args:
        source (`str`, *optional*): None or "stdlib" for the running interpreter's standard-library `.py`
            files (one document per file); a local `.txt` file (one document per paragraph), `.json`/
            `.jsonl` file, or a directory of `.txt`/`.md`/`.py` files (one document per file); otherwise a
            hub dataset id, optionally "id:config". A hub "validation" split is used when present.
        text_column (`str`): the column holding the text in json and hub datasets.
        validation_fraction (`float`): share of documents held out, chosen by a seeded permutation.
        max_chars (`int`, *optional*): cap on the total characters; whole documents are kept first-come
            in source order (the first one is truncated if it alone is longer).
        seed (`int`): seed of the train/validation split.
        cache_dir (`str` or `os.PathLike`, *optional*): where `datasets` caches file and hub builds
            (default: the HF datasets cache). The standard library corpus stays in memory.
    """
    return _load_corpus(source, text_column, validation_fraction, max_chars, seed, cache_dir)[0]


# ----------------------------------------------------------------------------- tokenizers


def _wrap_tokenizer(tok) -> transformers.PreTrainedTokenizerFast:
    kwargs = dict.fromkeys(("bos_token", "eos_token", "unk_token", "pad_token"), EOS_TOKEN)
    kwargs["clean_up_tokenization_spaces"] = False  # keeps decode(encode(x)) == x
    return transformers.PreTrainedTokenizerFast(tokenizer_object=tok, **kwargs)


def train_tokenizer(
    texts: Iterable[str], vocab_size: int = 4096, cache_dir: str | os.PathLike | None = None
) -> transformers.PreTrainedTokenizerFast:
    """Train a byte-level BPE tokenizer (GPT-2 style) on `texts`, or load it from `cache_dir`.

    The cache key is the sha256 of the recipe, `vocab_size` and the texts, so the same texts give the same
    `cache_dir/<key>/tokenizer.json`; a file lock makes concurrent runs train it once. "<|endoftext|>" is the
    bos, eos, unk and pad token.
    """
    texts = [str(t) for t in texts]
    if not any(t.strip() for t in texts):
        raise DataError("cannot train a tokenizer on an empty corpus; give some non-blank texts.")
    if vocab_size < 257:
        raise DataError(f"vocab_size must be at least 257 (256 bytes + {EOS_TOKEN}), got {vocab_size}.")
    digest = hashlib.sha256(f"{_TOKENIZER_RECIPE}\0{vocab_size}\0".encode())
    for t in texts:
        data = t.encode("utf-8", "surrogatepass")
        digest.update(len(data).to_bytes(8, "little"))
        digest.update(data)
    if cache_dir is None:
        return _wrap_tokenizer(_train_bpe(texts, vocab_size))
    cached = Path(cache_dir) / digest.hexdigest() / "tokenizer.json"
    cached.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(cached.with_name("tokenizer.json.lock")):  # one trainer; the others wait and read its file
        if not cached.is_file():
            tok = _train_bpe(texts, vocab_size)
            with atomic_path(cached) as tmp:
                tok.save(str(tmp))
    return _wrap_tokenizer(Tokenizer.from_file(str(cached)))


def _train_bpe(texts: list[str], vocab_size: int) -> Tokenizer:
    """A GPT-2 style byte-level BPE trained on ``texts``."""
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    alphabet = pre_tokenizers.ByteLevel.alphabet()  # all 256 bytes, so nothing is ever unknown
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size, special_tokens=[EOS_TOKEN], initial_alphabet=alphabet, show_progress=False
    )
    tok.train_from_iterator(texts, trainer=trainer, length=len(texts))
    return tok


def get_tokenizer(
    name_or_path: str | None,
    train_texts: Iterable[str] | None = None,
    vocab_size: int = 4096,
    cache_dir: str | os.PathLike | None = None,
) -> transformers.PreTrainedTokenizerBase:
    """Train a tokenizer on `train_texts` when `name_or_path` is None, else `AutoTokenizer.from_pretrained`.

    A pretrained tokenizer without a pad token gets `pad_token = eos_token`.
    """
    if name_or_path is None:
        if train_texts is None:
            raise DataError("get_tokenizer(None, ...) trains a tokenizer and needs train_texts.")
        return train_tokenizer(train_texts, vocab_size=vocab_size, cache_dir=cache_dir)
    try:
        tok = transformers.AutoTokenizer.from_pretrained(name_or_path)
    except (OSError, ValueError) as e:
        raise DataError(
            f"cannot load tokenizer {name_or_path!r} ({e}); give a local folder with tokenizer files, "
            f"a hub id (online), or None to train one on the corpus."
        ) from e
    if tok.pad_token is None and tok.eos_token is not None:
        tok.pad_token = tok.eos_token
    return tok


# ----------------------------------------------------------------------------- packing


def pack_dataset(
    dataset: datasets.Dataset,
    tokenizer: transformers.PreTrainedTokenizerBase,
    block_size: int,
    *,
    text_column: str = "text",
    num_proc: int | None = None,
) -> datasets.Dataset:
    """Tokenize, append eos to every document, concatenate and cut into blocks of exactly `block_size`.

    The remainder after the last full block is dropped. Returns one column "input_ids" (int64) in torch
    format: `ds[i]["input_ids"]` has shape (block_size,).
    """
    if block_size < 2:
        raise DataError(f"block_size must be at least 2 (an input and a target token), got {block_size}.")
    if text_column not in dataset.column_names:
        raise DataError(f"dataset has no column {text_column!r}; available columns: {dataset.column_names}.")
    sep = tokenizer.eos_token_id if tokenizer.eos_token_id is not None else tokenizer.sep_token_id
    if sep is None:
        raise DataError("tokenizer has neither an eos_token nor a sep_token to separate documents; set one.")

    def tokenize(batch):
        ids = tokenizer(batch[text_column], add_special_tokens=False)["input_ids"]
        return {"ids": [[*x, sep] for x in ids]}

    tokenized = dataset.map(
        tokenize, batched=True, num_proc=num_proc, remove_columns=dataset.column_names, desc="Tokenizing"
    )
    flat = pc.list_flatten(tokenized.data.column("ids"))  # all tokens, documents in order
    total = len(flat)
    if total < block_size:
        raise DataError(
            f"the corpus gives only {total} tokens, fewer than one block of block_size={block_size}; "
            f"use a smaller --block-size or more data (e.g. a larger max_chars)."
        )
    flat = pa.concat_arrays(flat.chunks) if isinstance(flat, pa.ChunkedArray) else flat
    flat = flat.slice(0, total // block_size * block_size).cast(pa.int64())
    blocks = pa.FixedSizeListArray.from_arrays(flat, block_size)  # (n_blocks, block_size)
    return datasets.Dataset(InMemoryTable(pa.table({"input_ids": blocks}))).with_format("torch")


@dataclass
class LMData:
    """Packed language-modelling data."""

    train: datasets.Dataset  # "input_ids": (block_size,) int64 per row, torch format
    validation: datasets.Dataset  # same layout, held-out documents
    tokenizer: transformers.PreTrainedTokenizerBase  # trained on the train split only, or pretrained
    source: str  # human description, e.g. "python-stdlib (3.11.7, 812 files)"
    num_train_tokens: int  # tokens in the train blocks (len(train) * block_size)


def build_lm_datasets(
    source: str | None = None,
    *,
    block_size: int,
    tokenizer_name: str | None = None,
    vocab_size: int = 4096,
    max_chars: int | None = None,
    validation_fraction: float = 0.05,
    seed: int = 0,
    cache_dir: str | os.PathLike | None = None,
    text_column: str = "text",
) -> LMData:
    """Load a corpus (see `load_text_corpus`), get a tokenizer and pack both splits into blocks.

    Args:
        block_size (`int`): tokens per training example.
        tokenizer_name (`str`, *optional*): a pretrained tokenizer; None trains a byte-level BPE of
            `vocab_size` on the train split only.
        cache_dir (`str` or `os.PathLike`, *optional*): trained tokenizers go to `cache_dir/<key>/`,
            `datasets` builds of files and hub datasets to `cache_dir/datasets`.

    Example:
        >>> data = build_lm_datasets(block_size=128, max_chars=200_000, cache_dir="cache")
    """
    ds_cache = None if cache_dir is None else Path(cache_dir) / "datasets"
    corpus, what = _load_corpus(source, text_column, validation_fraction, max_chars, seed, ds_cache)
    tokenizer = get_tokenizer(tokenizer_name, corpus["train"]["text"], vocab_size, cache_dir)
    train = pack_dataset(corpus["train"], tokenizer, block_size)
    try:
        validation = pack_dataset(corpus["validation"], tokenizer, block_size)
    except DataError as e:
        raise DataError(
            f"the validation split of {what} holds less than one block of {block_size} tokens ({e}); "
            f"raise validation_fraction (now {validation_fraction}) or max_chars, or lower --block-size."
        ) from e
    return LMData(train, validation, tokenizer, what, len(train) * block_size)
