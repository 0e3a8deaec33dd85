"""Per-run results of the MLP studies: the cache that makes a long study resumable, and CSV text.

The report folders are written with the library's one folder writer, `hf_varinit.io_utils.write_folder`; their
cards with `hf_varinit.train.study_report.study_card`.
"""

from __future__ import annotations

import csv
import io
import json
import os
from collections.abc import Sequence
from pathlib import Path

__all__ = ["RunCache", "csv_text"]


def csv_text(rows: Sequence[dict], columns: Sequence[str]) -> str:
    """CSV text of ``rows`` (dicts) restricted to ``columns``; None is an empty field."""
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=list(columns), extrasaction="ignore", lineterminator="\n")
    writer.writeheader()
    for r in rows:
        writer.writerow({c: ("" if r.get(c) is None else r.get(c)) for c in columns})
    return buf.getvalue()


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
