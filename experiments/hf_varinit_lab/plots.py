"""The figures of the MLP studies (PNG): the sweep's loss / accuracy against the initial std, compare's loss curves."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from hf_varinit.train.study_report import figure, seed_band
from hf_varinit.train.study_stats import mean_std
from hf_varinit_lab.study_settings import CLAIM_BAND, CompareConfig, SweepConfig

__all__ = ["compare_plot", "sweep_plot"]


def _colormap(name: str):
    import matplotlib

    return matplotlib.colormaps[name]


def sweep_plot(rows: list[dict], bands: list[dict], cfg: SweepConfig, path: Path) -> None:
    """Final train loss and test accuracy against the initial std, one column per dataset, one line per (depth, width).

    Args:
        rows (`list[dict]`): the sweep's per-seed rows.
        bands (`list[dict]`): the stability band per (dataset, depth, width), shaded.
        cfg (`SweepConfig`): the sweep's settings (depths, std grid, stable fraction).
        path (`Path`): the PNG to write.
    """
    datasets = list(dict.fromkeys(r["dataset"] for r in rows))
    fig = figure(4.2 * len(datasets) + 0.8, 6.4)
    axes = fig.subplots(2, len(datasets), squeeze=False)  # (loss, accuracy) x datasets
    cmap = _colormap("viridis")
    lines = [(d, w) for d in cfg.depths for w in cfg.widths]
    colors = {key: cmap(i / max(len(lines) - 1, 1)) for i, key in enumerate(lines)}
    for j, ds in enumerate(datasets):
        chance = next(r["chance_loss"] for r in rows if r["dataset"] == ds)
        cap = 3 * chance
        for depth, width in lines:
            pts = [r for r in rows if r["dataset"] == ds and r["depth"] == depth and r["width"] == width]
            if not pts:
                continue
            label = f"depth {depth}" + (f", width {width}" if len(cfg.widths) > 1 else "")
            stds = cfg.stds
            loss = [np.mean([min(r["final_train_loss"], cap) for r in pts if r["std"] == s]) for s in stds]
            acc = [np.mean([r["test_accuracy"] for r in pts if r["std"] == s]) for s in stds]
            axes[0][j].plot(stds, loss, "o-", color=colors[depth, width], ms=3, label=label)
            axes[1][j].plot(stds, acc, "o-", color=colors[depth, width], ms=3, label=label)
            band = next(b for b in bands if b["dataset"] == ds and b["depth"] == depth and b["width"] == width)
            if band["band_lo"] is not None:
                for ax in (axes[0][j], axes[1][j]):
                    ax.axvspan(band["band_lo"], band["band_hi"], color=colors[depth, width], alpha=0.12)
        axes[0][j].axhline(chance, color="grey", ls="--", lw=0.8, label="chance ln C")
        axes[0][j].axhline(cfg.stable_fraction * chance, color="grey", ls=":", lw=0.8, label="stable threshold")
        axes[0][j].set_title(f"{ds}: final train loss (clipped at 3 ln C)")
        axes[1][j].set_title(f"{ds}: test accuracy")
        for ax in (axes[0][j], axes[1][j]):
            ax.set_xscale("log")
            ax.axvspan(*CLAIM_BAND, fill=False, hatch="//", edgecolor="tab:red", lw=0, alpha=0.35)
            ax.set_xlabel("initial std")
        axes[0][j].legend(fontsize=7)
    fig.suptitle("Shaded: measured stability band per depth (majority of seeds); hatched red: claimed 1e-2..1e-1",
                 fontsize=9)
    fig.savefig(path, format="png", dpi=110)


def compare_plot(curves: list[dict], groups: list[dict], cfg: CompareConfig, path: Path) -> None:
    """Full-training-set loss curves, mean ± std over seeds (ddof 1), one panel per activation.

    Args:
        curves (`list[dict]`): rows of (arm, activation, seed, step, train_loss).
        groups (`list[dict]`): the per-arm summary (arm, activation, n_seeds).
        cfg (`CompareConfig`): the study's settings (dataset, shape, target loss).
        path (`Path`): the PNG to write.
    """
    acts = list(dict.fromkeys(g["activation"] for g in groups))
    fig = figure(5.0 * len(acts) + 0.6, 3.8)
    axes = fig.subplots(1, len(acts), squeeze=False)[0]
    cmap = _colormap("tab10")
    for ax, act in zip(axes, acts):
        for i, g in enumerate(x for x in groups if x["activation"] == act):
            pts = [c for c in curves if c["arm"] == g["arm"]]
            steps = sorted(set(c["step"] for c in pts))
            # per step, the seeds still running there (a diverged run's curve stops early)
            spread = [mean_std([c["train_loss"] for c in pts if c["step"] == s]) for s in steps]
            seed_band(ax, steps, [m for m, _ in spread], [sd for _, sd in spread], color=cmap(i),
                      label=f"{g['arm']} (n={g['n_seeds']})")
        ax.axhline(cfg.target_loss, color="grey", ls=":", lw=0.8, label=f"target {cfg.target_loss:g}")
        ax.set_yscale("log")
        ax.set_xlabel("SGD step")
        ax.set_ylabel("full training-set loss")
        ax.set_title(f"{cfg.dataset}, {act}, {cfg.depth}x{cfg.width}")
        ax.legend(fontsize=7)
    fig.savefig(path, format="png", dpi=110)
