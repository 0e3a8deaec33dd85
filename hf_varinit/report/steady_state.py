"""Steady-state analysis of a variance record: V(W), drift, spread and equilibration.

Definitions (tolerances are fields of :class:`AnalysisOptions`):

* **Trailing window**: the last ``n_w = max(min_window, ceil(window_fraction * S))`` records of a
  series of ``S`` records (capped at ``S``).
* **Drift** of the window: ``|slope * (t_end - t_start)| / |mean|`` where ``slope`` is the
  least-squares line of the statistic against the step over the window and ``mean`` its window mean:
  the relative change the fitted trend makes across the window. (Chosen over a half-window difference
  because it uses every point, so it is less sensitive to noise.)
* **Stationary**: ``S >= min_window``, every value in the window finite, ``drift < drift_tol`` and, when the
  record gives its lr schedule, the window's lr fraction ``>= min_lr_fraction`` (below).
* **V(W)**: the window mean of ``options.stat`` (``second_moment`` by default, E[W^2]) when stationary.
  When not stationary, ``v_w`` is the **last recorded value**, ``stationary=False`` and ``reason`` says
  why; it is never silently averaged.
* **Spread**: the window's std / mean (relative).
* **Equilibration step** of a tensor: the first recorded step after which ``var`` stays within
  ``±band`` (relative) of its window mean through the end of the record; ``None`` if it never does or
  the series is not stationary. Of a layer: the max over the layer's tensors (``None`` if any is None).
* **Ratio**: ``v_w / init_var``; ``init_var = init_std**2`` from the tracked metadata when known, else
  the first recorded value of ``options.stat``.
* **Schedule-aware stationarity**: when the record's recipe (`hf_varinit.record.recipe.RunRecipe`) gives its
  whole lr schedule (``lr``, ``lr_schedule`` ``"cosine"`` or ``"constant"``, ``warmup_steps`` and ``max_steps``:
  the records of ``hf-varinit pretrain``; see `known_schedule`) the learning rate of every update is known exactly
  (`learning_rates`, transformers' `get_scheduler`, as the loop builds it). The window's **lr share** is the lr
  summed over the updates inside the window divided by the lr summed over the whole record, and its **lr
  fraction** the mean lr inside the window divided by the peak lr. A window whose lr fraction is below
  ``min_lr_fraction`` is **not stationary** whatever its drift: under a decayed lr a flat curve cannot be told
  from "lr ~ 0" (variance that rises linearly in cumulative lr looks flat once the lr has decayed).
* **Unknown schedule**: a record whose recipe leaves any of those unknown (MLP studies, Trainer callbacks,
  snapshots) keeps the drift test alone, so its stationarity cannot tell a plateau from a decayed lr; its lr
  share and fraction are None, which is how the card knows to say so. A run continued to a larger ``max_steps``
  rebuilt its schedule: its lr before the continuation is then approximate.
* **Snapshots**: a record made from a set of weights (metadata ``source == "checkpoint"``, see
  `hf_varinit.record.from_checkpoint`) has one record. Its ``v_w`` is that snapshot's second moment, and
  nothing is judged: ``stationary`` is None (not judged), no window, drift, spread or equilibration step.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Collection
from typing import Any

import numpy as np
import torch
from transformers import get_scheduler

from hf_varinit.record.recipe import RunRecipe
from hf_varinit.record.stats_file import VarianceStats
from hf_varinit.report.options import AnalysisOptions

__all__ = ["SCHEDULER_NAMES", "KeyAnalysis", "analyze", "analyze_series", "cumulative_lr", "is_snapshot",
           "known_schedule", "layer_equilibration", "learning_rates"]

# hf-varinit pretrain's --lr-schedule -> transformers.get_scheduler name (both after a linear warmup)
SCHEDULER_NAMES = {"cosine": "cosine", "constant": "constant_with_warmup"}


@dataclasses.dataclass
class KeyAnalysis:
    """Steady-state analysis of one tracked tensor (or slice)."""

    key: str
    role: str | None
    layer: int | None
    stationary: bool | None  # None: not judged (a one-snapshot record)
    v_w: float | None
    window: tuple[int, int] | None
    spread: float | None
    drift: float | None
    equilibration_step: int | None
    band: float
    init_var: float | None
    ratio: float | None
    reason: str | None = None
    window_lr_share: float | None = None  # lr summed inside the window / over the record (None: schedule unknown)
    window_lr_fraction: float | None = None  # mean lr inside the window / peak lr (None: schedule unknown)

    def to_dict(self) -> dict:
        """JSON-ready dict (non-finite floats become None)."""
        out = {f.name: getattr(self, f.name) for f in dataclasses.fields(self) if f.name != "key"}
        out["window"] = list(self.window) if self.window is not None else None
        return {k: (_finite_or_none(v) if isinstance(v, float) else v) for k, v in out.items()}


def _finite_or_none(x: float | None) -> float | None:
    return None if x is None or not math.isfinite(x) else float(x)


def analyze_series(
    step: np.ndarray, values: np.ndarray, var: np.ndarray | None = None,
    options: AnalysisOptions | None = None, lr: np.ndarray | None = None,
) -> dict[str, Any]:
    """Analyse one series: returns ``stationary, v_w, window, spread, drift, equilibration_step, reason,
    window_lr_share, window_lr_fraction``.

    Args:
        step (`np.ndarray`): [S] recorded steps.
        values (`np.ndarray`): [S] the statistic giving V(W) (``options.stat``).
        var (`np.ndarray`, *optional*): [S] the variance used for equilibration (defaults to ``values``).
        lr (`np.ndarray`, *optional*): the learning rate of every update (``lr[i]`` made step ``i + 1``; see
            `learning_rates`), at least up to the last recorded step, its maximum the peak lr; adds the
            schedule-aware test.
    """
    opts = options or AnalysisOptions()
    step = np.asarray(step, dtype=np.float64)
    x = np.asarray(values, dtype=np.float64)
    v = x if var is None else np.asarray(var, dtype=np.float64)
    n = x.shape[0]
    out: dict[str, Any] = dict(stationary=False, v_w=None, window=None, spread=None, drift=None,
                               equilibration_step=None, reason=None, window_lr_share=None, window_lr_fraction=None)
    if n == 0:
        out["reason"] = "no records"
        return out
    n_w = min(n, max(opts.min_window, math.ceil(opts.window_fraction * n)))
    ws, wx = step[-n_w:], x[-n_w:]
    out["window"] = (int(ws[0]), int(ws[-1]))
    if lr is not None:
        out.update(_window_lr(lr, int(step[0]), int(ws[0]), int(ws[-1])))
    finite = bool(np.all(np.isfinite(wx)))
    if finite:
        mean = float(wx.mean())
        out["spread"] = float(wx.std() / abs(mean)) if mean != 0 else math.inf
        if n_w >= 2 and ws[-1] > ws[0]:
            slope = float(np.polyfit(ws, wx, 1)[0])
            change = abs(slope * (ws[-1] - ws[0]))
            out["drift"] = change / abs(mean) if mean != 0 else (0.0 if change == 0 else math.inf)
    if n < opts.min_window:
        out["reason"] = f"too few records ({n} < min_window={opts.min_window})"
    elif not finite:
        out["reason"] = "non-finite values in the trailing window"
    elif out["drift"] is None or not out["drift"] < opts.drift_tol:
        out["reason"] = f"drift {out['drift']:.3g} over the trailing window >= drift_tol={opts.drift_tol}"
    elif out["window_lr_fraction"] is not None and out["window_lr_fraction"] < opts.min_lr_fraction:
        out["reason"] = (f"lr decayed to {100 * out['window_lr_fraction']:.3g}% of peak in the trailing window "
                         f"(its mean; min_lr_fraction={opts.min_lr_fraction:g}, the window got "
                         f"{100 * out['window_lr_share']:.3g}% of the lr budget): the plateau cannot be told "
                         "from lr ~ 0")
    else:
        out["stationary"] = True
    if not out["stationary"]:
        out["v_w"] = float(x[-1])
        return out
    out["v_w"] = float(wx.mean())
    steady_var = float(v[-n_w:].mean())
    inside = np.abs(v - steady_var) <= opts.band * abs(steady_var)
    outside = np.flatnonzero(~inside)
    first = 0 if outside.size == 0 else int(outside[-1]) + 1
    if first < n:
        out["equilibration_step"] = int(step[first])
    else:
        out["reason"] = f"last record is outside the ±{opts.band:g} band"
    return out


def analyze(stats: VarianceStats, options: AnalysisOptions | None = None) -> dict[str, KeyAnalysis]:
    """Analyse every tracked tensor of ``stats``; returns ``{key: KeyAnalysis}`` in column order."""
    opts = options or AnalysisOptions()
    result: dict[str, KeyAnalysis] = {}
    snapshot = is_snapshot(stats.metadata)
    # the whole schedule (for its peak); None when the recipe does not give it: the drift test alone
    lr = None if snapshot or not len(stats) else learning_rates(stats.recipe)
    if lr is not None and int(stats.step[-1]) > lr.size:  # a record past max_steps: not this schedule
        lr = None
    for j, info in enumerate(stats.tracked):
        values, var = getattr(stats, opts.stat)[:, j], stats.var[:, j]
        if snapshot:
            a = dict(stationary=None, v_w=float(values[-1]), window=None, spread=None, drift=None,
                     equilibration_step=None, reason="one snapshot of weights: not judged")
        else:
            a = analyze_series(stats.step, values, var, opts, lr=lr)
        init_std = info.get("init_std")
        if isinstance(init_std, (int, float)) and not isinstance(init_std, bool) and math.isfinite(init_std):
            init_var = float(init_std) ** 2
        else:
            init_var = float(values[0]) if len(values) and math.isfinite(values[0]) else None
        ratio = a["v_w"] / init_var if a["v_w"] is not None and init_var else None
        layer = info.get("layer")
        result[info["key"]] = KeyAnalysis(
            key=info["key"], role=info.get("role"), layer=layer if isinstance(layer, int) else None,
            band=opts.band, init_var=init_var, ratio=ratio, **a,
        )
    return result


def _window_lr(lr: np.ndarray, first: int, start: int, end: int) -> dict[str, float | None]:
    """The window's lr share (updates ``start..end-1`` over ``first..end-1``) and lr fraction (mean / peak)."""
    cum = np.concatenate([[0.0], np.cumsum(lr, dtype=np.float64)])
    total, inside = cum[end] - cum[first], cum[end] - cum[start]
    peak = float(np.max(lr)) if lr.size else 0.0
    if end <= start or total <= 0 or peak <= 0:
        return {"window_lr_share": None, "window_lr_fraction": None}
    return {"window_lr_share": float(inside / total), "window_lr_fraction": float(inside / (end - start) / peak)}


def known_schedule(recipe: RunRecipe) -> bool:
    """Whether ``recipe`` gives the lr of every update: an lr > 0, an ``lr_schedule`` of ``SCHEDULER_NAMES``,
    ``warmup_steps`` and ``max_steps`` > 0 (the records of ``hf-varinit pretrain``). Any of them unknown: False."""
    r = recipe
    return (r.lr_schedule in SCHEDULER_NAMES and r.lr is not None and r.lr > 0 and r.warmup_steps is not None
            and r.max_steps is not None and r.max_steps > 0)


def learning_rates(recipe: RunRecipe, last_step: int | None = None) -> np.ndarray | None:
    """The learning rate of every update of a run: ``lr[i]`` took step ``i`` to ``i + 1``.

    Computed with transformers' `get_scheduler` on a throwaway optimizer, exactly as the training loop builds
    its scheduler (``SCHEDULER_NAMES``). None when the schedule is unknown (`known_schedule`) or ``last_step``
    lies past ``max_steps``.

    Args:
        recipe (`RunRecipe`): the run's recipe (`VarianceStats.recipe`).
        last_step (`int`, *optional*): return the updates up to this step (default ``max_steps``).
    """
    if not known_schedule(recipe):
        return None
    n = recipe.max_steps if last_step is None else last_step
    if not 0 <= n <= recipe.max_steps:
        return None
    optimizer = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=recipe.lr)
    scheduler = get_scheduler(SCHEDULER_NAMES[recipe.lr_schedule], optimizer, num_warmup_steps=recipe.warmup_steps,
                              num_training_steps=recipe.max_steps)
    multiplier = scheduler.lr_lambdas[0]
    return np.array([recipe.lr * multiplier(i) for i in range(n)], dtype=np.float64)


def cumulative_lr(recipe: RunRecipe, steps: np.ndarray) -> np.ndarray | None:
    """The lr summed over the updates before each recorded step (``sum(lr[:step])``); None when the schedule is
    unknown (see `learning_rates`)."""
    steps = np.asarray(steps, dtype=np.int64)
    if steps.size == 0 or steps.min() < 0:
        return None
    lr = learning_rates(recipe, last_step=int(steps.max()))
    if lr is None:
        return None
    return np.concatenate([[0.0], np.cumsum(lr)])[steps]


def is_snapshot(metadata: dict) -> bool:
    """Whether a record's metadata describes one set of weights (``report --from-model``), not a training record."""
    return metadata.get("source") == "checkpoint"


def layer_equilibration(tensors: dict[str, KeyAnalysis], roles: Collection[str] | None = None
                        ) -> dict[int, int | None]:
    """Per layer: the latest equilibration step of its tensors (None if any never equilibrates).

    Args:
        tensors (`dict[str, KeyAnalysis]`): the analysis per key.
        roles (`Collection[str]`, *optional*): only these roles (e.g. ``("q", "k", "v")``); default every tensor.
    """
    per: dict[int, list[int | None]] = {}
    for a in tensors.values():
        if a.layer is not None and (roles is None or a.role in roles):
            per.setdefault(a.layer, []).append(a.equilibration_step)
    return {
        layer: (None if any(s is None for s in steps) else max(steps))  # type: ignore[type-var]
        for layer, steps in sorted(per.items())
    }
