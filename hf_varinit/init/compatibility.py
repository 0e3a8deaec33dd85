"""Does a table of V(W) fit a model? The measured model's tracked tensors, rebuilt from its stored config.

`check_compatible` refuses another architecture, width or tensor shape, naming the first mismatch and the fix;
`table_shapes` / `table_fans` give the measured model's own tensors (Q/K/V slices by their own fans) for width
transfer. A `VarianceTable` is what the optimal rule reads of a report (`hf_varinit.init.optimal`).
"""

from __future__ import annotations

import json
from functools import lru_cache

import torch

from hf_varinit.arch.builder import config_from_dict
from hf_varinit.arch.config import config_differences, hidden_size
from hf_varinit.arch.keys import shape_differences
from hf_varinit.errors import HFVarInitError, ReportError
from hf_varinit.init.patch import from_config
from hf_varinit.init.roles import tracked_roles, tracked_shapes
from hf_varinit.init.table import VarianceTable
from hf_varinit.init.transfer import check_only_scale_differs


@lru_cache(maxsize=16)
def _tracked_of_config(model_type: str, config_json: str) -> dict[str, tuple[tuple[int, ...], int]] | None:
    """``{key: (shape, fan_in)}`` of the tracked tensors of the model a stored config describes (built on the meta
    device), or None when the config cannot be rebuilt here (a model type this transformers does not know, a
    remote-code model)."""
    try:
        config = config_from_dict(model_type, json.loads(config_json))
        with torch.device("meta"):  # shapes only
            model = from_config(config, "hf")
        fans = {entry.key: entry.fan_in for entry, _ in tracked_roles(model)}
        return {key: (shape, fans[key]) for key, shape in tracked_shapes(model).items()}
    except (HFVarInitError, ValueError, TypeError, KeyError, AttributeError, ImportError, OSError):
        return None


def _measured_tracked(table: VarianceTable) -> dict[str, tuple[tuple[int, ...], int]] | None:
    if not table.config or table.model_type in (None, "unknown"):
        return None
    found = _tracked_of_config(table.model_type, json.dumps(table.config, sort_keys=True, default=str))
    return None if found is None else {k: v for k, v in found.items() if k in table.keys}


def table_shapes(table: VarianceTable) -> dict[str, tuple[int, ...]] | None:
    """``{key: shape}`` of the measured model's tracked tensors (those the table has V(W) for), or None if that
    model cannot be rebuilt from the stored config."""
    found = _measured_tracked(table)
    return None if found is None else {k: shape for k, (shape, _) in found.items()}


def table_fans(table: VarianceTable) -> dict[str, int] | None:
    """``{key: fan_in}`` of the measured model's tracked tensors (Q/K/V slices by their own fans), or None if that
    model cannot be rebuilt from the stored config."""
    found = _measured_tracked(table)
    return None if found is None else {k: fan for k, (_, fan) in found.items()}


def _config_hint(table: VarianceTable, config) -> str:
    diffs = config_differences(table.config, config) if config is not None else []
    return "" if not diffs else " (config: " + ", ".join(f"{k} {a} vs {b}" for k, a, b in diffs) + ")"


def check_compatible(table: VarianceTable, model, width_transfer: str | None = None) -> None:
    """Refuse a table measured on another architecture, width, or tensor shapes than ``model``'s.

    Shapes are those of the tracked tensors themselves: a config entry that changes no tensor (GPT-2's head count)
    is no mismatch, and one that does (the vocabulary, the positions) is named with the tensor. Depth is left to
    the caller (`OptimalRule.bind` maps it by relative depth with ``allow-depth-interpolation``). With
    ``width_transfer`` a width (hidden size, heads, MLP width) may differ, nothing else.

    Raises:
        ReportError: naming the first mismatch, both values and the fix.
    """
    config = getattr(model, "config", None)
    if config is None:
        return
    source = table.source
    model_type = getattr(config, "model_type", None)
    if table.model_type and model_type and table.model_type != model_type:
        raise ReportError(
            f"report {source!r} was measured on model_type {table.model_type!r}, but the model is "
            f"{model_type!r}; use a report of the same architecture"
        )
    measured_width = hidden_size(table.config or {})
    width = hidden_size(config)
    if measured_width and width and int(measured_width) != width:
        if width_transfer is None:
            raise ReportError(
                f"report {source!r} was measured at hidden size {measured_width}, but the model has {width}; V(W) "
                "depends on the width: add ',width-transfer=fan-in' (or =fit with a multi-width report) to the rule "
                "spec, or use a report of the same width"
            )
        differences = config_differences(table.config, config)
        check_only_scale_differs(table.model_type, differences, f"report {source!r}")
        return
    theirs = table_shapes(table)
    if theirs is None:  # the measured model cannot be rebuilt: compare the config entries that fix shapes
        diffs = config_differences(table.config or {}, config)
        if diffs:
            key, a, b = diffs[0]
            raise ReportError(f"report {source!r} was measured with {key}={a}, but the model has {key}={b}; "
                              "the tensors' shapes differ, so use a report of the same architecture")
        return
    differences = shape_differences(theirs, tracked_shapes(model))
    if differences:
        key, a, b = differences[0]
        raise ReportError(
            f"report {source!r} does not fit the model: tracked tensor {key!r} has shape {a} in the report but "
            f"{b} in the model{_config_hint(table, config)}; V(W) holds per tensor, so use a report measured at "
            f"these shapes, or build the report's own architecture with hv.from_report({source!r}, ...)"
        )


__all__ = ["check_compatible", "table_fans", "table_shapes"]
