"""What the optimal rule reads: V(W) per tensor key, and the model it was measured on.

A `VarianceTable` is made by a report (`VarianceReport.variance_table`), by `read_variance_table` from a report
folder, file, bundled name or hub id, or by hand (``optimal`` with ``variances={key: V(W)}``). Reading a source is
the report stage's job, which comes after ``init/``: `read_variance_table` imports its reader on first use, the way
transformers' auto classes resolve a registry entry (``"module:attribute"``), so nothing here depends on the order
in which modules were imported.
"""

from __future__ import annotations

import importlib
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from hf_varinit.errors import ReportError
from hf_varinit.init.transfer import TransferFit

# The reader of report sources (a folder, a steady_state.json / variance.safetensors file, a bundled name, a hub id).
REPORT_READER = "hf_varinit.report.reader:variance_table"


@dataclass(frozen=True)
class VarianceTable:
    """V(W) per tensor key (``layers.3.q``, ``embedding``) with the measured model's description.

    Args:
        variances: key -> V(W) > 0, after the ``nonstationary`` policy of the source.
        source: where the table came from, for messages (a report path, ``variances table``).
        model_type, config: the measured model (its stored config), to check a model against it and rebuild its
            tensors' fans for width transfer; None when unknown.
        n_layer: the measured model's depth (None: unknown).
        transfer: the width fit of a multi-run report (``width-transfer=fit``).
        recipe: the `RunRecipe` it was measured under (None: unknown).
        keys: every tensor key the source tracked (also those the policy dropped).
    """

    variances: Mapping[str, float]
    source: str
    model_type: str | None = None
    config: Mapping[str, Any] | None = field(default=None, hash=False)
    n_layer: int | None = None
    transfer: TransferFit | None = field(default=None, hash=False)
    recipe: Any = field(default=None, hash=False)  # a RunRecipe (hf_varinit.record.recipe); None: unknown
    keys: frozenset[str] = frozenset()

    def __post_init__(self):
        object.__setattr__(self, "variances", check_variances(self.variances, self.source))
        object.__setattr__(self, "keys", frozenset(self.keys) | frozenset(self.variances))


def check_variances(variances: Mapping[str, Any], source: str) -> dict[str, float]:
    """Refuse non-finite, zero or negative variances, naming the key."""
    out = {}
    for key, value in variances.items():
        try:
            v = float(value)
        except (TypeError, ValueError):
            v = math.nan
        if not math.isfinite(v) or v <= 0:
            raise ReportError(f"{source}: V(W) of {key!r} is {value!r}; variances must be finite and > 0")
        out[key] = v
    return out


def read_variance_table(source: str, nonstationary: str = "last") -> VarianceTable:
    """The table of a report source: a folder, a ``steady_state.json`` / ``variance.safetensors`` file, the name of
    a report bundled with the package, or a hub id.

    Raises:
        ReportError: the source cannot be read, or (``nonstationary="error"``) holds tensors that never settled.
    """
    module, _, attribute = REPORT_READER.partition(":")
    reader = getattr(importlib.import_module(module), attribute)
    return reader(source, nonstationary=nonstationary)


__all__ = ["REPORT_READER", "VarianceTable", "check_variances", "read_variance_table"]
