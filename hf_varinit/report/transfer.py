"""Moving V(W) from the model a report was measured on to another width and depth: pure functions on tables.

* **Depth** (`interpolate_depth`): per-layer V(W) is mapped by relative depth, linearly along depth.
* **fan-in** (`fan_in_table`): V_target = V_source * fan_in_source / fan_in_target, the variance-preserving
  assumption (exponent 1), with each tensor's (or Q/K/V slice's) true fan_in.
* **fit** (`fit_runs`, `fit_table`): from runs at >= 2 widths, per role and relative depth
  V(W) = c * fan_in^(-alpha), least squares in log-log; the target's V(W) is predicted at its own fan_in. An
  embedding's fan_in is the vocabulary (or the positions), the same at every width, so embeddings are fitted
  against the width (their fan_out) instead: V(W) = c * width^(-alpha).

Order when width and depth both change: first predict at the target's fans on the source's depth grid (the
report's layers, or for a fit the deepest run's layers), then interpolate along depth to the target's layers.
Keys are those of `hf_varinit.arch.layer_key` (``layers.3.q``, ``embedding``); fans per role are the same in every
layer, so the target's fan of a source key is that of the same role.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from hf_varinit.arch import get_architecture, parse_layer_key
from hf_varinit.errors import ReportError
from hf_varinit.init.roles import EMBEDDING_ROLES

__all__ = ["PowerLawFit", "TransferFit", "check_combinable", "check_only_scale_differs", "describe_recipe",
           "fan_in_table", "fit_power_law", "fit_runs", "fit_table", "interpolate_depth", "recipe_note", "recipe_of",
           "role_fans", "scale_config_keys", "transfer_section"]

WIDTH_TRANSFERS = ("fan-in", "fit")


def interpolate_depth(variances: dict[str, float], src_layers: int, dst_layers: int) -> dict[str, tuple[float, str]]:
    """Map per-layer V(W) onto another depth by relative depth (linear along depth).

    Returns key -> (variance, note naming the source layers used).
    """
    return {k: (v, f"interpolated from {note}" if note else "")
            for k, (v, note) in _along_depth(variances, src_layers, dst_layers).items()}


def _along_depth(variances: Mapping[str, float], src_layers: int, dst_layers: int) -> dict[str, tuple[float, str]]:
    """key -> (value, ``layer 3`` / ``layers 3-4 (w=0.45)``, empty outside the blocks) on ``dst_layers`` layers."""
    by_role: dict[str, dict[int, float]] = {}
    out: dict[str, tuple[float, str]] = {}
    for key, v in variances.items():
        layer, role = parse_layer_key(key)
        if layer is not None:
            by_role.setdefault(role, {})[layer] = v
        else:
            out[key] = (v, "")
    for role, layers in by_role.items():
        for j in range(dst_layers):
            pos = j * (src_layers - 1) / (dst_layers - 1) if dst_layers > 1 else 0.0
            lo, hi = math.floor(pos), math.ceil(pos)
            if lo not in layers or hi not in layers:
                continue
            w = pos - lo
            value = (1 - w) * layers[lo] + w * layers[hi]
            out[f"layers.{j}.{role}"] = (value, f"layer {lo}" if lo == hi else f"layers {lo}-{hi} (w={w:.2f})")
    return out


def role_fans(fans: Mapping[str, int]) -> dict[str, int]:
    """``{role: fan_in}`` of per-key fans (a tensor outside the blocks is its own role)."""
    return {parse_layer_key(k)[1]: int(f) for k, f in fans.items()}


def _join(*parts: str) -> str:
    return "; ".join(p for p in parts if p)


def fan_in_table(variances: Mapping[str, float], src_fans: Mapping[str, int], dst_fans: Mapping[str, int],
                 src_layers: int | None, dst_layers: int | None, src_width: int | None) -> dict[str, tuple[float, str]]:
    """V(W) scaled by fan_in(source) / fan_in(target) on the source's layers, then mapped to ``dst_layers``.

    A key whose role the target lacks (or whose source fan is unknown) is left out: the rule's fallback covers it.
    """
    src, dst = role_fans(src_fans), role_fans(dst_fans)
    scaled = {}
    for key, v in variances.items():
        role = parse_layer_key(key)[1]
        if role in src and role in dst:
            scaled[key] = v * src[role] / dst[role]
    note = f"fan-in alpha=1 from width {src_width}" if src_width else "fan-in alpha=1"
    return {k: (v, _join(note, where)) for k, (v, where) in _depth_map(scaled, src_layers, dst_layers).items()}


def _depth_map(values: Mapping[str, float], src_layers: int | None, dst_layers: int | None
               ) -> dict[str, tuple[float, str]]:
    if src_layers and dst_layers and src_layers != dst_layers:
        return _along_depth(values, src_layers, dst_layers)
    return {k: (v, "" if parse_layer_key(k)[0] is None else f"layer {parse_layer_key(k)[0]}")
            for k, v in values.items()}


@dataclass
class PowerLawFit:
    """V(W) = c * x^(-alpha) for one key, with the points it was fitted on (log residuals); x is the fan_in, or for
    embeddings (``variable="width"``) the hidden size. ``fan_in`` holds the x values."""

    c: float
    alpha: float
    fan_in: list[int]
    v_w: list[float]
    residuals: list[float]
    relative_depth: float | None = None
    variable: str = "fan_in"

    def predict(self, fan_in: float) -> float:
        return self.c * float(fan_in) ** (-self.alpha)


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


@dataclass
class TransferFit:
    """The ``transfer`` entry of a multi-run report: its runs and, with >= 2 widths, a fit per key.

    Fit keys are on ``n_layer`` layers (the deepest run's); every run is mapped onto them by relative depth.
    """

    widths: list[int]
    depths: list[int]
    sources: list[str]
    n_layer: int | None
    fits: dict[str, PowerLawFit] = field(default_factory=dict)

    def to_dict(self) -> dict:
        return {"widths": self.widths, "depths": self.depths, "sources": self.sources, "n_layer": self.n_layer,
                "fits": {k: asdict(f) for k, f in self.fits.items()}}

    @classmethod
    def from_dict(cls, doc: Any) -> TransferFit | None:
        """Parse a ``transfer`` entry (None when absent); ReportError naming what is malformed."""
        if doc is None:
            return None
        try:
            fits = {str(k): PowerLawFit(**f) for k, f in doc.get("fits", {}).items()}
            out = cls(widths=[int(w) for w in doc["widths"]], depths=[int(d) for d in doc["depths"]],
                      sources=[str(s) for s in doc["sources"]], n_layer=doc.get("n_layer"), fits=fits)
        except (TypeError, KeyError, ValueError, AttributeError) as exc:
            raise ReportError(f"malformed 'transfer' entry: {type(exc).__name__}: {exc}") from None
        for key, f in fits.items():
            if not all(isinstance(x, (int, float)) and math.isfinite(x) for x in (f.c, f.alpha)) or f.c <= 0:
                raise ReportError(f"'transfer' fit of {key!r}: c={f.c!r}, alpha={f.alpha!r} must be finite, c > 0")
            if f.variable not in ("fan_in", "width"):
                raise ReportError(f"'transfer' fit of {key!r}: variable={f.variable!r} must be 'fan_in' or 'width'")
        return out


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
        for key, (v, _) in _depth_map(r["variances"], r["n_layer"], depth).items():
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


def fit_table(fit: TransferFit, dst_fans: Mapping[str, int], dst_layers: int | None, dst_width: int | None = None
              ) -> dict[str, tuple[float, str]]:
    """V(W) predicted at the target's fans (embeddings: its width ``dst_width``) on the fit's layers, then mapped to
    ``dst_layers`` by relative depth. A key the target lacks (or an embedding without ``dst_width``) is left out."""
    dst = role_fans(dst_fans)
    predicted, alphas, versus = {}, {}, {}
    for key, f in fit.fits.items():
        role = parse_layer_key(key)[1]
        x = dst_width if f.variable == "width" else dst.get(role)
        if role in dst and x:
            predicted[key], alphas[key] = f.predict(x), f.alpha
            versus[key] = " vs width" if f.variable == "width" else ""
    widths = ",".join(map(str, fit.widths))
    alpha_at = _depth_map(alphas, fit.n_layer, dst_layers)  # the exponent used, interpolated like V(W)
    return {key: (v, _join(f"fit alpha={alpha_at[key][0]:.3g}{versus.get(key, '')} over widths {widths}", where))
            for key, (v, where) in _depth_map(predicted, fit.n_layer, dst_layers).items()}


def scale_config_keys(model_type: str | None) -> set[str] | None:
    """Config entries that change with the width or the depth (hidden size, heads, MLP width, layers), from the
    architecture table; None for a model type the table does not describe."""
    arch = get_architecture(model_type)
    if arch is None or arch.config is None:
        return None
    names = arch.config
    return {n for n in (names.layers, names.width, names.heads, names.mlp_width, names.kv_heads, "head_dim") if n}


# Config entries that describe a file or a seed, not the model: runs may differ in them.
_NOT_MODEL = frozenset({"transformers_version", "_name_or_path", "architectures", "varinit_seed", "dtype",
                        "torch_dtype"})
RECIPE_KEYS = ("optimizer", "lr", "lr_schedule", "warmup_steps")


def check_combinable(runs: Sequence[Mapping[str, Any]]) -> None:
    """Refuse runs that differ in anything but width and depth: the model type, another config entry (the
    vocabulary, the init rule...) or the training recipe; the message names the entry and both runs.

    Args:
        runs: each ``{"source": str, "model_type": str, "config": dict, "recipe": dict or None}``.
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
        ra, rb = first["recipe"] or {}, run["recipe"] or {}
        for key in RECIPE_KEYS:
            if ra.get(key) != rb.get(key):
                raise ReportError(f"runs {pair} were trained with {key} {ra.get(key)!r} vs {rb.get(key)!r}; a "
                                  "multi-run report combines runs of one training recipe")


def check_only_scale_differs(model_type: str | None, differences: Sequence[tuple[str, Any, Any]], what: str) -> None:
    """Refuse config differences ``(key, theirs, mine)`` other than width and depth (the vocabulary, positions)."""
    scale_keys = scale_config_keys(model_type)
    if scale_keys is None:
        raise ReportError(f"{what}: width transfer needs a model type of the architecture table, not "
                          f"{model_type!r}; use a report of the model's width")
    for key, a, b in differences:
        if key not in scale_keys:
            raise ReportError(f"{what} was measured with {key}={a}, but the model has {key}={b}; width transfer "
                              f"maps the width only, so use a report with the same {key}")


def recipe_note(recipe: Mapping[str, Any] | None, optimizer: str | None = None, lr: float | None = None
                ) -> str | None:
    """A note when a run's optimizer (or lr) is not the ``recipe`` a report was measured under; None when they
    agree or the recipe is unknown."""
    if recipe is None or (optimizer is None and lr is None):
        return None
    notes = []
    if optimizer is not None and optimizer.lower() != str(recipe["optimizer"]).lower():
        notes.append(f"this run uses {optimizer}: V(W) under AdamW and under SGD are different objects (the "
                     "steady-state theory is about SGD), so record a report under the run's optimizer")
    if lr is not None and recipe.get("lr") is not None and float(lr) != float(recipe["lr"]):
        notes.append(f"this run uses lr {lr}: V(W) moves with the learning rate")
    return f"the report was measured under {describe_recipe(recipe)}, but " + "; and ".join(notes) if notes else None


def recipe_of(metadata: Mapping[str, Any]) -> dict[str, Any] | None:
    """The training recipe a report's V(W) was measured under (optimizer, lr, lr_schedule, warmup_steps), or None
    when the record does not say (a snapshot of weights). Records made before ``lr_schedule`` was kept were cosine."""
    if not metadata.get("optimizer"):
        return None
    return {"optimizer": str(metadata["optimizer"]), "lr": metadata.get("lr"),
            "lr_schedule": metadata.get("lr_schedule") or "cosine", "warmup_steps": metadata.get("warmup_steps")}


def describe_recipe(recipe: Mapping[str, Any] | None) -> str:
    """``adamw, lr 0.001, cosine schedule, 10 warmup steps`` (or that it is unknown)."""
    if not recipe:
        return "training recipe unknown"
    warmup = recipe.get("warmup_steps")
    return (f"{recipe['optimizer']}, lr {recipe.get('lr')}, {recipe.get('lr_schedule')} schedule"
            + (f", {warmup} warmup steps" if warmup is not None else ""))


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
                 "`optimal:report=...,width-transfer=fit`.\n")
    lines.append("| key | α | c | max abs log residual |\n|---|---|---|---|")
    for key, f in fit.fits.items():
        worst = max((abs(r) for r in f.residuals), default=0.0)
        lines.append(f"| `{key}` | {f.alpha:.3g} | {f.c:.4g} | {worst:.3g} |")
    return ["\n".join(lines)]
