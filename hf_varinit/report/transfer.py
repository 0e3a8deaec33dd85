"""Multi-run reports: V(W) = c * fan_in^(-alpha) fitted per key over runs at several widths and depths.

`fit_runs` makes the `TransferFit` that the optimal rule's ``width-transfer=fit`` applies
(`hf_varinit.init.transfer`); `check_combinable` refuses runs that differ in more than width and depth.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from hf_varinit.arch.keys import parse_layer_key
from hf_varinit.errors import ReportError
from hf_varinit.init.roles import EMBEDDING_ROLES
from hf_varinit.init.transfer import PowerLawFit, TransferFit, depth_map, role_fans, scale_config_keys
from hf_varinit.record.recipe import RunRecipe

__all__ = ["check_combinable", "fit_power_law", "fit_runs", "recipe_note", "transfer_section"]


def fit_power_law(fan_in: Sequence[float], v_w: Sequence[float]) -> PowerLawFit:
    """Least squares of log V = log c - alpha log fan_in. With one distinct fan_in (an embedding, whose fan is the
    vocabulary at every width) alpha is 0 and c the geometric mean. Residuals are log(V / predicted)."""
    x, y = np.log(np.asarray(fan_in, dtype=np.float64)), np.log(np.asarray(v_w, dtype=np.float64))
    if len(x) == 0 or not (np.all(np.isfinite(x)) and np.all(np.isfinite(y))):
        raise ReportError(f"cannot fit V(W) = c * fan_in^-alpha to fan_in={list(fan_in)}, v_w={list(v_w)}: "
                          "every value must be finite and > 0")
    if np.ptp(x) == 0:
        slope, intercept = 0.0, float(y.mean())
    else:
        slope, intercept = (float(a) for a in np.polyfit(x, y, 1))
    residuals = y - (intercept + slope * x)
    return PowerLawFit(c=math.exp(intercept), alpha=-slope if slope else 0.0, fan_in=[int(f) for f in fan_in],
                       v_w=[float(v) for v in v_w], residuals=[float(r) for r in residuals])


def fit_runs(runs: Sequence[Mapping[str, Any]]) -> TransferFit:
    """Fit V(W) = c * fan_in^(-alpha) per key across runs.

    Args:
        runs: each ``{"source": str, "width": int, "n_layer": int, "variances": {key: V}, "fans": {key: fan_in}}``.
    """
    depth = max((r["n_layer"] or 0) for r in runs) or None
    widths = sorted({int(r["width"]) for r in runs})
    points: dict[str, list[tuple[int, float]]] = {}
    for r in runs:
        fans = role_fans(r["fans"])
        for key, (v, _) in depth_map(r["variances"], r["n_layer"], depth).items():
            role = parse_layer_key(key)[1]
            if role in EMBEDDING_ROLES:  # its fan_in is the vocabulary at every width: fit against the width
                points.setdefault(key, []).append((int(r["width"]), v))
            elif role in fans:
                points.setdefault(key, []).append((fans[role], v))
    fits = {}
    if len(widths) >= 2:
        for key, pts in points.items():
            fit = fit_power_law([p[0] for p in pts], [p[1] for p in pts])
            layer, role = parse_layer_key(key)
            fit.variable = "width" if role in EMBEDDING_ROLES else "fan_in"
            fit.relative_depth = None if layer is None else (layer / (depth - 1) if depth and depth > 1 else 0.0)
            fits[key] = fit
    return TransferFit(widths=widths, depths=sorted({int(r["n_layer"]) for r in runs if r["n_layer"]}),
                       sources=[str(r["source"]) for r in runs], n_layer=depth, fits=fits)


# Config entries that describe a file or a seed, not the model: runs may differ in them.
_NOT_MODEL = frozenset({"transformers_version", "_name_or_path", "architectures", "varinit_seed", "dtype",
                        "torch_dtype"})


def check_combinable(runs: Sequence[Mapping[str, Any]]) -> None:
    """Refuse runs that differ in anything but width and depth: the model type, another config entry (the
    vocabulary, the init rule...) or the training recipe; the message names the entry and both runs.

    Args:
        runs: each ``{"source": str, "model_type": str, "config": dict, "recipe": RunRecipe}``; a recipe field
            that either run leaves unknown is not compared.
    """
    first = runs[0]
    for run in runs[1:]:
        pair = f"{first['source']!r} and {run['source']!r}"
        if run["model_type"] != first["model_type"]:
            raise ReportError(f"runs {pair} are of model_type {first['model_type']!r} and {run['model_type']!r}; "
                              "a multi-run report combines runs of one model type at several widths / depths")
        ignored = (scale_config_keys(run["model_type"]) or set()) | _NOT_MODEL
        a, b = first["config"], run["config"]
        for key in sorted((set(a) | set(b)) - ignored):
            if a.get(key) != b.get(key):
                raise ReportError(f"runs {pair} differ in config entry {key!r} ({a.get(key)!r} vs {b.get(key)!r}); "
                                  "a multi-run report combines runs that differ only in width and depth")
        for key, mine, theirs in first["recipe"].differences(run["recipe"]):
            raise ReportError(f"runs {pair} were trained with {key} {mine!r} vs {theirs!r}; a "
                              "multi-run report combines runs of one training recipe")


def recipe_note(recipe: RunRecipe | None, optimizer: str | None = None, lr: float | None = None) -> str | None:
    """A note when a run's optimizer (or lr) is not the one in the ``recipe`` a report was measured under; None when
    they agree, or when the report does not say (an unknown field makes no claim)."""
    if recipe is None:
        return None
    notes = []
    if optimizer is not None and recipe.optimizer is not None and optimizer.lower() != recipe.optimizer.lower():
        notes.append(f"this run uses {optimizer}: V(W) under AdamW and under SGD are different objects (the "
                     "steady-state theory is about SGD), so record a report under the run's optimizer")
    if lr is not None and recipe.lr is not None and float(lr) != recipe.lr:
        notes.append(f"this run uses lr {lr}: V(W) moves with the learning rate")
    return f"the report was measured under {recipe.describe()}, but " + "; and ".join(notes) if notes else None


def transfer_section(fit: TransferFit | None) -> list[str]:
    """The card's markdown section on a multi-run report's width fit (none without a fit)."""
    if fit is None:
        return []
    lines = [f"## Width and depth transfer\n\nRuns: {', '.join(fit.sources)} (widths {fit.widths}, depths "
             f"{fit.depths}).\n"]
    if not fit.fits:
        lines.append("One width only: no width fit; the runs map by relative depth "
                     "(`optimal:report=...,allow-depth-interpolation`).")
        return ["\n".join(lines)]
    lines.append(f"V(W) = c · fan_in^(−α) per tensor on {fit.n_layer} layers (least squares in log-log); use "
                 "`optimal:report=...,width-transfer=fit-pooled` (one exponent per role, the mean of the table's, "
                 "shrunk toward 0 by its standard error) or `...,width-transfer=fit` (each tensor's own).\n")
    lines.append("| key | α | c | max abs log residual |\n|---|---|---|---|")
    for key, f in fit.fits.items():
        worst = max((abs(r) for r in f.residuals), default=0.0)
        lines.append(f"| `{key}` | {f.alpha:.3g} | {f.c:.4g} | {worst:.3g} |")
    return ["\n".join(lines)]
