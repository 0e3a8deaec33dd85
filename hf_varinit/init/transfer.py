"""Moving V(W) from the model a report was measured on to another width and depth: pure functions on tables.

The optimal rule (`hf_varinit.init.optimal`) applies these; a multi-run report (`hf_varinit.report.transfer`)
makes the fits they read.

* **Depth** (`interpolate_depth`): per-layer V(W) is mapped by relative depth, linearly along depth.
* **copy** (`copy_table`): V(W) unchanged at another width (exponent 0), the simplest baseline.
* **fan-in** (`fan_in_table`): V_target = V_source * fan_in_source / fan_in_target, the variance-preserving
  assumption (exponent 1), with each tensor's (or Q/K/V slice's) true fan_in.
* **fit** (`fit_table`): from runs at >= 2 widths, per role and relative depth V(W) = c * fan_in^(-alpha); the
  target's V(W) is predicted at its own fan_in. An embedding's fan_in is the vocabulary (or the positions), the
  same at every width, so embeddings are fitted against the width (their fan_out) instead: V(W) = c * width^(-alpha).
* **fit-pooled** (`pooled_fit_table`): one exponent per role instead of one per tensor: the mean of the role's
  per-tensor exponents, shrunk toward 0 by its standard error over the layers (to exactly 0, the copy, when the
  mean is within `POOLED_Z` standard errors of 0); each tensor's V(W) is then carried from the run whose width is
  nearest the target's. With two widths a per-tensor exponent is fitted on two points and carries their noise
  whole; the pooled one averages it over the layers and falls back to copying where the data do not support a
  trend.

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

from hf_varinit.arch.keys import parse_layer_key
from hf_varinit.arch.table import get_architecture
from hf_varinit.errors import ReportError

__all__ = ["WIDTH_TRANSFERS", "PowerLawFit", "TransferFit", "check_only_scale_differs", "copy_table", "depth_map",
           "fan_in_table",
           "fit_table", "interpolate_depth", "pooled_fit_table", "role_fans", "scale_config_keys",
           "shrunk_exponent"]

WIDTH_TRANSFERS = ("fan-in", "fit", "fit-pooled", "copy")
POOLED_Z = 2.0  # fit-pooled: a role's mean exponent is shrunk to 0 when it is within 2 standard errors of 0


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


def copy_table(variances: Mapping[str, float], src_layers: int | None, dst_layers: int | None,
               src_width: int | None) -> dict[str, tuple[float, str]]:
    """V(W) carried to another width unchanged (exponent 0), then mapped to ``dst_layers``: the baseline a width
    law has to beat."""
    note = f"copied from width {src_width} (alpha=0)" if src_width else "copied (alpha=0)"
    return {k: (v, _join(note, where)) for k, (v, where) in depth_map(variances, src_layers, dst_layers).items()}


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
    return {k: (v, _join(note, where)) for k, (v, where) in depth_map(scaled, src_layers, dst_layers).items()}


def depth_map(values: Mapping[str, float], src_layers: int | None, dst_layers: int | None
              ) -> dict[str, tuple[float, str]]:
    """key -> (value, where it came from) on ``dst_layers`` layers (unchanged when the depths agree)."""
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
    source_costs: list[dict] = field(default_factory=list)  # per source run: {"tokens", "flops"} (None: unknown)

    def to_dict(self) -> dict:
        return {"widths": self.widths, "depths": self.depths, "sources": self.sources, "n_layer": self.n_layer,
                "fits": {k: asdict(f) for k, f in self.fits.items()},
                **({"source_costs": self.source_costs} if self.source_costs else {})}

    @classmethod
    def from_dict(cls, doc: Any) -> TransferFit | None:
        """Parse a ``transfer`` entry (None when absent); ReportError naming what is malformed."""
        if doc is None:
            return None
        try:
            fits = {str(k): PowerLawFit(**f) for k, f in doc.get("fits", {}).items()}
            costs = [{k: None if c.get(k) is None else int(c[k]) for k in ("tokens", "flops")}
                     for c in doc.get("source_costs") or []]
            out = cls(widths=[int(w) for w in doc["widths"]], depths=[int(d) for d in doc["depths"]],
                      sources=[str(s) for s in doc["sources"]], n_layer=doc.get("n_layer"), fits=fits,
                      source_costs=costs)
        except (TypeError, KeyError, ValueError, AttributeError) as exc:
            raise ReportError(f"malformed 'transfer' entry: {type(exc).__name__}: {exc}") from None
        for key, f in fits.items():
            if not all(isinstance(x, (int, float)) and math.isfinite(x) for x in (f.c, f.alpha)) or f.c <= 0:
                raise ReportError(f"'transfer' fit of {key!r}: c={f.c!r}, alpha={f.alpha!r} must be finite, c > 0")
            if f.variable not in ("fan_in", "width"):
                raise ReportError(f"'transfer' fit of {key!r}: variable={f.variable!r} must be 'fan_in' or 'width'")
        return out


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
    alpha_at = depth_map(alphas, fit.n_layer, dst_layers)  # the exponent used, interpolated like V(W)
    return {key: (v, _join(f"fit alpha={alpha_at[key][0]:.3g}{versus.get(key, '')} over widths {widths}", where))
            for key, (v, where) in depth_map(predicted, fit.n_layer, dst_layers).items()}


def shrunk_exponent(alphas: Sequence[float], z: float = POOLED_Z) -> tuple[float, float, float]:
    """(shrunk exponent, mean, standard error) of a role's per-tensor exponents.

    The mean is scaled by ``max(0, 1 - (z * se / mean)^2)``: kept nearly whole when it is many standard errors
    from 0, set to 0 (copy) when within ``z`` of them. One tensor (an embedding) has no spread: its own exponent.
    """
    n = len(alphas)
    mean = math.fsum(alphas) / n
    if n < 2:
        return mean, mean, 0.0
    se = math.sqrt(math.fsum((a - mean) ** 2 for a in alphas) / (n - 1) / n)
    if mean == 0.0:
        return 0.0, mean, se
    return mean * max(0.0, 1.0 - (z * se / mean) ** 2) + 0.0, mean, se  # + 0.0: never -0.0


def pooled_fit_table(fit: TransferFit, dst_fans: Mapping[str, int], dst_layers: int | None,
                     dst_width: int | None = None, z: float = POOLED_Z) -> dict[str, tuple[float, str]]:
    """``width-transfer=fit-pooled``: V(W) of the run nearest the target's width, scaled by (x_target /
    x_nearest)^(-alpha_role) with one shrunk exponent per role (`shrunk_exponent`), then mapped to ``dst_layers``.

    ``x`` is the fan_in (embeddings: the width), as in `fit_table`; keys the target lacks are left out.
    """
    dst = role_fans(dst_fans)
    by_role: dict[str, list[float]] = {}
    for key, f in fit.fits.items():
        by_role.setdefault(parse_layer_key(key)[1], []).append(f.alpha)
    exponents = {role: shrunk_exponent(alphas, z) for role, alphas in by_role.items()}
    predicted, notes = {}, {}
    for key, f in fit.fits.items():
        role = parse_layer_key(key)[1]
        x = dst_width if f.variable == "width" else dst.get(role)
        if role not in dst or not x:
            continue
        alpha, mean, se = exponents[role]
        near = min(range(len(f.fan_in)), key=lambda i: abs(math.log(f.fan_in[i] / x)))
        predicted[key] = f.v_w[near] * (x / f.fan_in[near]) ** (-alpha)
        width = f.fan_in[near] if f.variable == "width" else f"fan_in {f.fan_in[near]}"
        notes[role] = (f"fit-pooled alpha={alpha:.3g} (role mean {mean:.3g} +- {round(se, 4):.2g} se) from the run at "
                       f"{'width ' if f.variable == 'width' else ''}{width}")
    return {key: (v, _join(notes[parse_layer_key(key)[1]], where))
            for key, (v, where) in depth_map(predicted, fit.n_layer, dst_layers).items()}


def scale_config_keys(model_type: str | None) -> set[str] | None:
    """Config entries that change with the width or the depth (hidden size, heads, MLP width, layers), from the
    architecture table; None for a model type the table does not describe."""
    arch = get_architecture(model_type)
    if arch is None or arch.config is None:
        return None
    names = arch.config
    return {n for n in (names.layers, names.width, names.heads, names.mlp_width, names.kv_heads, "head_dim") if n}


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
