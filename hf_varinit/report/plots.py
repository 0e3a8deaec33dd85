"""PNG plots of a variance report (matplotlib, Agg canvas, no display), drawn from plain data: the per-tensor
analyses (`KeyAnalysis`), the record (`VarianceStats`) and the equilibration band.

* ``qkv_variance.png``: one panel per role (Q, K, V when present), variance vs step, one line per layer
  coloured by depth, with a colorbar. Needs the record; skipped without it.
* ``qkv_variance_vs_cumulative_lr.png``: the same curves against the cumulative learning rate (the lr summed over
  the updates before each record, `steady_state.cumulative_lr`). A curve that is a straight line here rose with
  the lr budget, so a flat end against step under a decayed lr is the schedule, not an equilibrium. Only for
  records that give their lr schedule.
* ``equilibration.png``: the equilibration step (the headline settling definition, `steady_state`) vs depth, one
  line per role.
* ``steady_state_vs_depth.png``: V(W) vs depth per role, the init variance as dashed lines; tensors
  that are not stationary are drawn as hollow markers.

A snapshot (one set of weights, no trajectory) gets only the last, titled as the weights' E[W^2] vs depth: its
record has no curve to draw and no equilibration to judge.

Models without Q/K/V (e.g. the MLP with role ``linear``) get their own layered roles plotted instead.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np

from hf_varinit.io_utils import atomic_path
from hf_varinit.record.stats_file import VarianceStats
from hf_varinit.report.steady_state import KeyAnalysis, cumulative_lr

__all__ = ["CUMULATIVE_LR_PLOT", "PLOT_FILES", "display_roles", "plot_files", "plot_seed_bands", "role_keys",
           "write_plots"]

PLOT_FILES = ("qkv_variance.png", "equilibration.png", "steady_state_vs_depth.png")
CUMULATIVE_LR_PLOT = "qkv_variance_vs_cumulative_lr.png"
QKV = ("q", "k", "v")
_ROLE_TITLES = {"q": "Q", "k": "K", "v": "V"}


def display_roles(tensors: dict[str, KeyAnalysis]) -> list[str]:
    """Roles to show: q/k/v if any is tracked per layer, else every per-layer role, else every role."""
    layered = list(dict.fromkeys(a.role for a in tensors.values() if a.layer is not None and a.role))
    if any(r in QKV for r in layered):
        return [r for r in QKV if r in layered]
    if layered:
        return layered
    return list(dict.fromkeys(a.role or a.key for a in tensors.values()))


def role_keys(tensors: dict[str, KeyAnalysis], role: str) -> list[tuple[int, str]]:
    """``[(depth, key)]`` for ``role`` sorted by depth; tensors without a layer use their order."""
    rows = [a for a in tensors.values() if (a.role or a.key) == role]
    if all(a.layer is not None for a in rows):
        return sorted((a.layer, a.key) for a in rows)  # type: ignore[misc]
    return list(enumerate(a.key for a in rows))


def _figure(ncols: int, width: float = 4.2, height: float = 3.4) -> tuple[Any, list[Any]]:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width * ncols + 1.0, height), layout="constrained")
    FigureCanvasAgg(fig)
    axes = fig.subplots(1, ncols, squeeze=False)[0]
    return fig, list(axes)


def _integer_depth(axis: Any) -> None:
    from matplotlib.ticker import MaxNLocator

    axis.set_major_locator(MaxNLocator(integer=True))


def _save(fig: Any, path: Path) -> Path:
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=110)
    return path


def _positive(values: list[float]) -> bool:
    return bool(values) and all(v is not None and math.isfinite(v) and v > 0 for v in values)


def plot_variance_curves(tensors: dict[str, KeyAnalysis], stats: VarianceStats | None, path: Path,
                         against: str = "step") -> Path | None:
    """``qkv_variance.png``: variance vs step per role (``against="cumulative_lr"``: vs the cumulative lr, for
    ``qkv_variance_vs_cumulative_lr.png``); None without a record, or without its lr schedule for the latter."""
    from matplotlib import colormaps
    from matplotlib.cm import ScalarMappable
    from matplotlib.colors import Normalize

    if stats is None or len(stats) == 0:
        return None
    x = stats.step if against == "step" else cumulative_lr(stats.recipe, stats.step)
    if x is None:
        return None
    roles = display_roles(tensors)
    depths = [d for r in roles for d, _ in role_keys(tensors, r)] or [0]
    norm = Normalize(vmin=min(depths), vmax=max(max(depths), min(depths) + 1))
    cmap = colormaps["viridis"]
    fig, axes = _figure(len(roles))
    for ax, role in zip(axes, roles):
        all_vals: list[float] = []
        for depth, key in role_keys(tensors, role):
            series = stats.series(key, "var")
            all_vals.extend(float(v) for v in series)
            ax.plot(x, series, color=cmap(norm(depth)), lw=1.2)
        if _positive(all_vals):
            ax.set_yscale("log")
        ax.set_title(f"{_ROLE_TITLES.get(role, role)} weight variance")
        ax.set_xlabel("step" if against == "step" else "cumulative learning rate (sum of lr over updates)")
        ax.set_ylabel("Var(W)")
        ax.grid(alpha=0.3)
    cbar = fig.colorbar(ScalarMappable(norm=norm, cmap=cmap), ax=axes, label="layer (depth)")
    _integer_depth(cbar.ax.yaxis)
    return _save(fig, path)


def plot_seed_bands(curves: dict[str, list[tuple[Any, Any]]], xlabel: str, title: str, path: Path) -> Path:
    """One line per label: the mean over seeds with a ±1 std band; ``curves[label]`` is a list of (x, y) per seed
    on a common x grid (the seeds' recorded steps, or their cumulative lr, which match for one schedule)."""
    fig, (ax,) = _figure(1, width=6.0, height=4.0)
    for i, (label, runs) in enumerate(curves.items()):
        n = min(len(y) for _, y in runs)
        x = np.asarray(runs[0][0][:n], dtype=float)
        ys = np.stack([np.asarray(y[:n], dtype=float) for _, y in runs])
        mean, std = ys.mean(axis=0), ys.std(axis=0)
        ax.plot(x, mean, color=f"C{i % 10}", lw=1.4, label=f"{label} (n={len(runs)})")
        ax.fill_between(x, mean - std, mean + std, color=f"C{i % 10}", alpha=0.2, lw=0)
    ax.set_title(title)
    ax.set_xlabel(xlabel)
    ax.set_ylabel("Var(W) / Var(W) at init")
    ax.grid(alpha=0.3)
    if ax.get_legend_handles_labels()[0]:
        ax.legend(fontsize="small")
    return _save(fig, path)


def plot_equilibration(tensors: dict[str, KeyAnalysis], band: float, path: Path) -> Path:
    """``equilibration.png``: equilibration step vs depth, one line per role (``band``: the relative band used);
    a tensor without one (not stationary, or outside the band at the end) is counted in the title."""
    fig, (ax,) = _figure(1, width=5.5)
    never = 0
    for i, role in enumerate(display_roles(tensors)):
        rows = [(d, tensors[k].equilibration_step) for d, k in role_keys(tensors, role)]
        never += sum(s is None for _, s in rows)
        pts = [(d, s) for d, s in rows if s is not None]
        label = _ROLE_TITLES.get(role, role)
        if pts:
            ax.plot([d for d, _ in pts], [s for _, s in pts], color=f"C{i % 10}", marker="o", label=label)
    title = f"Equilibration step (band ±{band:g} of level)"
    ax.set_title(title + (f"; {never} none (not stationary or outside the band)" if never else ""),
                 fontsize="small")
    ax.set_xlabel("layer (depth)")
    _integer_depth(ax.xaxis)
    ax.set_ylabel("step")
    ax.grid(alpha=0.3)
    if ax.get_legend_handles_labels()[0]:
        ax.legend(fontsize="small")
    return _save(fig, path)


def plot_files(stats: VarianceStats | None, snapshot: bool = False) -> list[str]:
    """The names of the PNGs `write_plots` writes for this record."""
    if snapshot:
        return [PLOT_FILES[2]]
    names = [name for name in PLOT_FILES if name != PLOT_FILES[0] or (stats is not None and len(stats))]
    if stats is not None and len(stats) and cumulative_lr(stats.recipe, stats.step) is not None:
        names.insert(1, CUMULATIVE_LR_PLOT)
    return names


def plot_steady_state(tensors: dict[str, KeyAnalysis], path: Path, snapshot: bool = False) -> Path:
    """``steady_state_vs_depth.png``: V(W) vs depth per role against the init variance (dashed).

    For a snapshot the title says what it is (the E[W^2] of one set of weights) and nothing is drawn hollow.
    """
    fig, (ax,) = _figure(1, width=5.5)
    values: list[float] = []
    for i, role in enumerate(display_roles(tensors)):
        color = f"C{i % 10}"
        rows = [(d, tensors[k]) for d, k in role_keys(tensors, role)]
        rows = [(d, a) for d, a in rows if a.v_w is not None and math.isfinite(a.v_w)]
        label = _ROLE_TITLES.get(role, role)
        ax.plot([d for d, _ in rows], [a.v_w for _, a in rows], color=color, marker="o",
                label=f"{label} V(W)")
        hollow = [(d, a.v_w) for d, a in rows if a.stationary is False]
        if hollow:
            ax.scatter(*zip(*hollow), s=80, facecolors="white", edgecolors=color, zorder=3)
        init = [(d, a.init_var) for d, a in rows if a.init_var is not None and math.isfinite(a.init_var)]
        if init:
            ax.plot(*zip(*init), color=color, ls="--", lw=1.0, label=f"{label} init variance")
        values += [a.v_w for _, a in rows] + [v for _, v in init]  # type: ignore[misc]
    if _positive(values):
        ax.set_yscale("log")
    ax.set_title("E[W^2] of the weights vs depth (one snapshot)" if snapshot
                 else "Steady-state V(W) vs depth (hollow: not stationary)")
    ax.set_xlabel("layer (depth)")
    _integer_depth(ax.xaxis)
    ax.set_ylabel("E[W^2]")
    ax.grid(alpha=0.3)
    if ax.get_legend_handles_labels()[0]:
        ax.legend(fontsize="small")
    return _save(fig, path)


def write_plots(folder: str | Path, tensors: dict[str, KeyAnalysis], stats: VarianceStats | None,
                band: float, snapshot: bool = False) -> list[Path]:
    """Write the report's PNGs into ``folder`` (each atomically); returns the files written.

    Args:
        folder (`str` or `Path`): where the PNGs go.
        tensors (`dict[str, KeyAnalysis]`): the steady-state analysis per tracked key.
        stats (`VarianceStats`, *optional*): the record; without it ``qkv_variance.png`` is skipped, and without
            its lr schedule ``qkv_variance_vs_cumulative_lr.png``.
        band (`float`): the relative band of the equilibration step, for the plot's title.
        snapshot (`bool`): one set of weights: only ``steady_state_vs_depth.png`` (see `plot_files`).
    """
    folder = Path(folder)
    if snapshot:
        return [plot_steady_state(tensors, folder / PLOT_FILES[2], snapshot=True)]
    written = [
        plot_variance_curves(tensors, stats, folder / PLOT_FILES[0]),
        plot_variance_curves(tensors, stats, folder / CUMULATIVE_LR_PLOT, against="cumulative_lr"),
        plot_equilibration(tensors, band, folder / PLOT_FILES[1]),
        plot_steady_state(tensors, folder / PLOT_FILES[2]),
    ]
    return [p for p in written if p is not None]
