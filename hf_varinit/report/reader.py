"""Reading a report source into what the optimal rule needs: `load_report` and `variance_table`.

A source is a report folder, a ``steady_state.json`` / ``variance.safetensors`` file, the name of a report bundled
with the package, or a hub id. Reports are cached on the source and the modification times of its files, so a
rewritten report is read again. `hf_varinit.init.table.read_variance_table` resolves `variance_table` by name.
"""

from __future__ import annotations

import dataclasses
import os
import reprlib
from functools import lru_cache
from pathlib import Path
from typing import Any

from hf_varinit.errors import ReportError
from hf_varinit.init.table import VarianceTable
from hf_varinit.report.report import VarianceReport


def load_report(source: Any) -> VarianceReport:
    """``source`` loaded (a `VarianceReport` is returned as is).

    Raises:
        ReportError: ``source`` is not a report, or cannot be read.
    """
    if isinstance(source, VarianceReport):
        return source
    if not isinstance(source, (str, os.PathLike)):
        raise ReportError(f"report={reprlib.repr(source)} is not a report: give a VarianceReport, a report folder, a "
                          "steady_state.json / variance.safetensors file, a bundled report's name, or a hub id")
    source = os.fspath(source)
    path = Path(source)
    try:
        stamp = tuple(sorted((p.name, p.stat().st_mtime_ns) for p in path.iterdir() if p.is_file())) \
            if path.is_dir() else (path.stat().st_mtime_ns if path.exists() else None)
    except OSError as exc:  # unreadable, or a name the system refuses
        raise ReportError(f"report {reprlib.repr(source)} cannot be read: {exc.strerror or exc}; give a report "
                          "folder, a steady_state.json / variance.safetensors file, or a hub id") from None
    return _load_cached(source, stamp)


@lru_cache(maxsize=16)
def _load_cached(source: str, stamp: Any) -> VarianceReport:
    return VarianceReport.load(source)


def variance_table(source: str | os.PathLike[str], nonstationary: str = "last") -> VarianceTable:
    """The V(W) table of the report at ``source``, named by ``source`` in messages."""
    table = load_report(source).variance_table(nonstationary=nonstationary)
    return dataclasses.replace(table, source=os.fspath(source))


__all__ = ["load_report", "variance_table"]
