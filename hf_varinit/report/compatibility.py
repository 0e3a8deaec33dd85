"""Does a variance report fit a model? Its tracked tensors' shapes and fans, rebuilt from the stored config.

`check_compatible` refuses another architecture, width or tensor shape, naming the first mismatch and the fix;
`report_shapes` / `report_fans` give the report's own tensors (Q/K/V slices by their own fans) for width transfer.
"""

from __future__ import annotations

import json
from functools import lru_cache

import torch

from hf_varinit.arch import config_differences, config_from_dict, hidden_size, shape_differences
from hf_varinit.errors import HFVarInitError, ReportError
from hf_varinit.init.patch import from_config
from hf_varinit.init.roles import tracked_roles, tracked_shapes
from hf_varinit.report import transfer
from hf_varinit.report.report import VarianceReport


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


def _report_tracked(report: VarianceReport) -> dict[str, tuple[tuple[int, ...], int]] | None:
    if not report.config or report.model_type == "unknown":
        return None
    found = _tracked_of_config(report.model_type, json.dumps(report.config, sort_keys=True, default=str))
    return None if found is None else {k: v for k, v in found.items() if k in report.tensors}


def report_shapes(report: VarianceReport) -> dict[str, tuple[int, ...]] | None:
    """``{key: shape}`` of the report's tracked tensors (those it has V(W) for), or None if its model cannot be
    rebuilt from the stored config."""
    found = _report_tracked(report)
    return None if found is None else {k: shape for k, (shape, _) in found.items()}


def report_fans(report: VarianceReport) -> dict[str, int] | None:
    """``{key: fan_in}`` of the report's tracked tensors (Q/K/V slices by their own fans), or None if its model
    cannot be rebuilt from the stored config."""
    found = _report_tracked(report)
    return None if found is None else {k: fan for k, (_, fan) in found.items()}


def _config_hint(report: VarianceReport, config) -> str:
    diffs = config_differences(report.config, config) if config is not None else []
    return "" if not diffs else " (config: " + ", ".join(f"{k} {a} vs {b}" for k, a, b in diffs) + ")"


def check_compatible(report: VarianceReport, model, source: str, width_transfer: str | None = None) -> None:
    """Refuse a report measured on another architecture, width, or tensor shapes than ``model``'s.

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
    model_type = getattr(config, "model_type", None)
    if report.model_type and model_type and report.model_type != model_type:
        raise ReportError(
            f"report {source!r} was measured on model_type {report.model_type!r}, but the model is "
            f"{model_type!r}; use a report of the same architecture"
        )
    report_width = hidden_size(report.config)
    width = hidden_size(config)
    if report_width and width and int(report_width) != width:
        if width_transfer is None:
            raise ReportError(
                f"report {source!r} was measured at hidden size {report_width}, but the model has {width}; V(W) "
                "depends on the width: add ',width-transfer=fan-in' (or =fit with a multi-width report) to the rule "
                "spec, or use a report of the same width"
            )
        differences = config_differences(report.config, config)
        transfer.check_only_scale_differs(report.model_type, differences, f"report {source!r}")
        return
    theirs = report_shapes(report)
    if theirs is None:  # the report's model cannot be rebuilt: compare the config entries that fix shapes
        diffs = config_differences(report.config, config)
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
            f"{b} in the model{_config_hint(report, config)}; V(W) holds per tensor, so use a report measured at "
            f"these shapes, or build the report's own architecture with hv.from_report({source!r}, ...)"
        )


__all__ = ["check_compatible", "report_fans", "report_shapes"]
