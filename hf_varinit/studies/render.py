"""Shared writing helpers of the studies: report folders written atomically, markdown tables, model cards."""

from __future__ import annotations

import csv
import io
import math
import os
import shlex
import shutil
import sys
import tempfile
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

__all__ = [
    "add_threads_argument", "apply_threads", "command_line", "csv_text", "fmt", "json_safe", "markdown_table",
    "mean_std", "model_card", "write_folder",
]


def write_folder(dest: str | os.PathLike[str], writers: dict[str, Callable[[Path], None]]) -> Path:
    """Write a report folder: every ``writers[name](path)`` writes one file into a temporary folder first.

    A new folder is renamed into place; an existing one gets each file replaced atomically (other files in it
    are left alone). If a writer raises, ``dest`` is untouched.
    """
    dest = Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{dest.name}.", suffix=".tmp", dir=dest.parent))
    try:
        for name, writer in writers.items():
            target = tmp / name
            target.parent.mkdir(parents=True, exist_ok=True)
            writer(target)
        if not dest.exists():
            try:
                os.replace(tmp, dest)
                return dest
            except OSError:
                pass
        dest.mkdir(parents=True, exist_ok=True)
        for f in sorted(tmp.rglob("*")):
            if f.is_file():
                target = dest / f.relative_to(tmp)
                target.parent.mkdir(parents=True, exist_ok=True)
                os.replace(f, target)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return dest


def fmt(x: Any, digits: int = 4) -> str:
    """A table cell: floats with ``digits`` significant digits, None as an em dash."""
    if x is None:
        return "—"
    if isinstance(x, bool):
        return "yes" if x else "no"
    if isinstance(x, float):
        return f"{x:.{digits}g}" if math.isfinite(x) else str(x)
    return str(x).replace("|", "\\|")


def markdown_table(rows: Sequence[dict], columns: Sequence[str], headers: Sequence[str] | None = None) -> str:
    """A GitHub markdown table of ``rows`` (dicts) restricted to ``columns``."""
    head = list(headers or columns)
    lines = ["| " + " | ".join(head) + " |", "|" + "|".join("---" for _ in head) + "|"]
    lines += ["| " + " | ".join(fmt(r.get(c)) for c in columns) + " |" for r in rows]
    return "\n".join(lines)


def csv_text(rows: Sequence[dict], columns: Sequence[str]) -> str:
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


def json_safe(obj: Any) -> Any:
    """Replace non-finite floats by None (strict JSON), recursively."""
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {str(k): json_safe(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [json_safe(v) for v in obj]
    return obj


def command_line(module: str, subcommand: str, argv: Sequence[str] | None) -> str:
    """The regenerating command, as ``hf-varinit <subcommand> <args>``."""
    args = list(sys.argv[1:] if argv is None else argv)
    if args and args[0] == subcommand:
        args = args[1:]
    return " ".join(["hf-varinit", subcommand, *map(shlex.quote, args)])


def model_card(*, tags: Sequence[str], datasets: Sequence[str], body: str, extra: dict | None = None) -> str:
    """A model card (``README.md``) text with YAML metadata, via ``huggingface_hub.ModelCard``."""
    from huggingface_hub import ModelCard, ModelCardData

    data = ModelCardData(library_name="hf_varinit", tags=list(dict.fromkeys(["hf-varinit", *tags])),
                         datasets=list(datasets) or None, **(extra or {}))
    return str(ModelCard(f"---\n{data.to_yaml()}\n---\n{body}"))


def add_threads_argument(parser) -> None:
    parser.add_argument("--threads", type=int, default=None,
                        help="torch CPU threads (default: leave torch's setting); 1 is fastest for these small MLPs "
                             "on a busy machine")


def apply_threads(args) -> None:
    """``torch.set_num_threads(args.threads)`` when ``--threads`` was given."""
    threads = getattr(args, "threads", None)
    if threads:
        import torch

        torch.set_num_threads(int(threads))
