"""Shared writing helpers of the studies: report folders written atomically, CSV text, seed statistics, cards, and
the per-run cache that makes a long study resumable."""

from __future__ import annotations

import csv
import io
import json
import math
import os
from collections.abc import Callable, Sequence
from pathlib import Path

from huggingface_hub import ModelCard, ModelCardData

from hf_varinit.calibrate import check_output
from hf_varinit.io_utils import atomic_folder

__all__ = ["RunCache", "csv_text", "mean_std", "model_card", "write_folder"]

CARD_TEMPLATE = "---\n{{ card_data }}\n---\n{{ body }}"  # YAML metadata, then the study's markdown


def write_folder(dest: str | os.PathLike[str], writers: dict[str, Callable[[Path], None]], *,
                 overwrite: bool = False) -> Path:
    """Write a report folder whole: every ``writers[name](path)`` writes one file (or sub-folder) into a staging
    folder, which then becomes ``dest``. If a writer raises, ``dest`` is untouched and nothing is left behind.

    Args:
        dest (`str` or `os.PathLike`): the report folder.
        writers (`dict[str, Callable[[Path], None]]`): file name (relative to ``dest``) -> its writer.
        overwrite (`bool`): replace an existing ``dest`` (all of it).

    Returns:
        `Path`: ``dest``.

    Raises:
        ReportError: ``dest`` exists and ``overwrite`` is False.
    """
    check_output(dest, overwrite)
    with atomic_folder(dest) as tmp:
        for name, writer in writers.items():
            target = tmp / name
            target.parent.mkdir(parents=True, exist_ok=True)
            writer(target)
    return Path(dest)


def csv_text(rows: Sequence[dict], columns: Sequence[str]) -> str:
    """CSV text of ``rows`` (dicts) restricted to ``columns``; None is an empty field."""
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=list(columns), extrasaction="ignore", lineterminator="\n")
    writer.writeheader()
    for r in rows:
        writer.writerow({c: ("" if r.get(c) is None else r.get(c)) for c in columns})
    return buf.getvalue()


def mean_std(values: Sequence[float]) -> tuple[float, float]:
    """Mean and population std over seeds (``inf`` if any value is not finite; std 0 for one value)."""
    vals = [float(v) for v in values]
    if not vals:
        return math.nan, math.nan
    if not all(math.isfinite(v) for v in vals):
        return math.inf, math.nan
    m = sum(vals) / len(vals)
    return m, math.sqrt(sum((v - m) ** 2 for v in vals) / len(vals))


def model_card(*, tags: Sequence[str], datasets: Sequence[str], body: str, extra: dict | None = None) -> str:
    """A model card (``README.md``) text with YAML metadata, via ``huggingface_hub.ModelCard``.

    Args:
        tags (`Sequence[str]`): card tags (``hf-varinit`` is always first).
        datasets (`Sequence[str]`): hub ids of the datasets (may be empty).
        body (`str`): the markdown below the metadata.
        extra (`dict`, *optional*): further `ModelCardData` fields.
    """
    data = ModelCardData(library_name="hf_varinit", tags=list(dict.fromkeys(["hf-varinit", *tags])),
                         datasets=list(datasets) or None, **(extra or {}))
    return str(ModelCard.from_template(data, template_str=CARD_TEMPLATE, body=body))


class RunCache:
    """Per-run results appended to ``<output>.runs.jsonl`` as they finish, so a study stopped half-way resumes.

    Each line is ``{"fingerprint", "key", "value"}``; only lines whose fingerprint (the settings that change a run)
    matches are reused, and a torn last line is skipped. `clear` removes the file once the report is written.
    """

    def __init__(self, output: str | os.PathLike[str] | None, fingerprint: dict):
        self.path = Path(f"{output}.runs.jsonl") if output else None
        self.fingerprint = json.dumps(fingerprint, sort_keys=True, default=str)
        self.values: dict[str, dict] = {}
        if self.path is not None and self.path.exists():
            for line in self.path.read_text().splitlines():
                try:
                    item = json.loads(line)
                except json.JSONDecodeError:
                    continue
                if item.get("fingerprint") == self.fingerprint:
                    self.values[item["key"]] = item["value"]

    def get(self, key: str) -> dict | None:
        """The cached value of ``key``, or None."""
        return self.values.get(key)

    def put(self, key: str, value: dict) -> None:
        """Remember ``value`` under ``key`` (appended to the file at once)."""
        self.values[key] = value
        if self.path is not None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            with self.path.open("a") as f:
                f.write(json.dumps({"fingerprint": self.fingerprint, "key": key, "value": value},
                                   default=str) + "\n")

    def clear(self) -> None:
        """Remove the file (the study's report is written)."""
        if self.path is not None:
            self.path.unlink(missing_ok=True)
