"""``hf-varinit sweep``: a logarithmic sweep of the initial weight std of ReLU MLPs, with a stability band.

Every point (dataset, depth, std, seed) builds ``from_config(VarInitMLPConfig(...), rule="normal:std=<std>")``
(every weight, head included, from N(0, std^2); biases zero), measures the forward signal and the gradients at
init on one batch, trains with plain SGD and measures the full-training-set loss and the test accuracy.

Regime of a point (measured numbers only; C classes, chance loss L0 = ln C, tau = ``stable_fraction``, B =
``signal_bound``; ``act_ratio`` = mean square of the last hidden activation at init / mean square of the input):

* **exploding**: the training loss became non-finite (diverged), or ``act_ratio > B``, or the final
  full-training-set loss L > tau * L0 with ``act_ratio >= 1``;
* **vanishing**: ``act_ratio < 1/B``, or L > tau * L0 with ``act_ratio < 1``;
* **stable**: otherwise: training brought L to at most tau * L0 and the signal at init stayed within B of the input.

The **stability band** of a (dataset, depth) is the longest contiguous run of grid stds that are stable in the
majority of seeds; its edges are grid points (the true edge lies within one grid step outside them).

Usage:
    hf-varinit sweep                       # the default study (~10 min on 2 CPU cores)
    hf-varinit sweep --quick               # seconds: a smoke test
    python -m hf_varinit.studies.sweep ... # the same without the CLI entry point
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from hf_varinit.errors import ConfigError
from hf_varinit.io_utils import atomic_write_json
from hf_varinit.studies.mlp_train import build_mlp, init_diagnostics, train_mlp
from hf_varinit.studies.render import (
    add_threads_argument,
    apply_threads,
    csv_text,
    fmt,
    json_safe,
    markdown_table,
    model_card,
    write_folder,
)

__all__ = ["SweepConfig", "SweepResult", "add_sweep_arguments", "classify", "run_sweep", "run_sweep_cli", "main"]

CLAIM_BAND = (1e-2, 1e-1)
REGIMES = ("vanishing", "stable", "exploding")
HUB_IDS = {"mnist": "ylecun/mnist", "fashion_mnist": "zalando-datasets/fashion_mnist"}
CSV_COLUMNS = [
    "dataset", "depth", "width", "std", "seed", "regime", "trained", "final_train_loss", "test_accuracy", "chance_loss",
    "diverged", "steps", "act_ratio", "input_ms", "act_var", "act_ms", "grad_norm", "init_loss",
]


def default_stds(num: int = 13, lo: float = 1e-4, hi: float = 1e1) -> list[float]:
    """``num`` stds log-spaced from ``lo`` to ``hi`` (13 points from 1e-4 to 1e1 by default)."""
    return [float(s) for s in np.logspace(math.log10(lo), math.log10(hi), num)]


@dataclass
class SweepConfig:
    """Settings of the sweep (each field is a ``--flag`` of ``hf-varinit sweep``)."""

    datasets: list[str] = field(default_factory=lambda: ["wine", "digits", "mnist-subset"])
    depths: list[int] = field(default_factory=lambda: [3, 6, 10])
    stds: list[float] = field(default_factory=default_stds)
    seeds: list[int] = field(default_factory=lambda: [0, 1, 2])
    width: int = 128  # hidden width of every layer
    steps: int | None = 600  # SGD steps per point (wins over epochs)
    epochs: int | None = None
    lr: float = 0.05
    batch_size: int = 64
    max_train: int | None = None  # subsample the training split
    stable_fraction: float = 0.5  # tau: stable needs final train loss <= tau * ln(C)
    signal_bound: float = 1e6  # B: stable needs 1/B <= act_ratio at init <= B
    output: str = "model_cards/sweep-relu-mlp"

    def __post_init__(self) -> None:
        if not self.datasets or not self.depths or not self.stds or not self.seeds:
            raise ConfigError("sweep: datasets, depths, stds and seeds must each be non-empty")
        if any(s <= 0 or not math.isfinite(s) for s in self.stds):
            raise ConfigError(f"sweep: stds={self.stds} must all be finite and > 0")
        if min(self.depths) < 1 or self.width < 1:
            raise ConfigError(f"sweep: depths={self.depths} and width={self.width} must be >= 1")
        if not 0 < self.stable_fraction < 1:
            raise ConfigError(f"sweep: stable_fraction={self.stable_fraction} must lie in (0, 1), e.g. 0.5")
        if not self.signal_bound > 1:
            raise ConfigError(f"sweep: signal_bound={self.signal_bound} must be > 1, e.g. 1e6")
        self.stds = sorted(float(s) for s in self.stds)


QUICK = dict(datasets=["wine"], depths=[3], stds=[1e-4, 0.3, 10.0], seeds=[0], width=16, steps=80,
             output="model_cards/sweep-quick")


@dataclass
class SweepResult:
    """Rows (one per point and seed), bands per (dataset, depth), the summary, and the folder written."""

    rows: list[dict]
    bands: list[dict]
    summary: dict
    output: Path | None


def classify(final_loss: float, diverged: bool, act_ratio: float, chance_loss: float, tau: float = 0.5,
             bound: float = 1e6) -> str:
    """The regime of one point (see the module docstring for the rule)."""
    if diverged or not math.isfinite(final_loss) or act_ratio > bound:
        return "exploding"
    if act_ratio < 1.0 / bound:
        return "vanishing"
    if final_loss <= tau * chance_loss:
        return "stable"
    return "exploding" if act_ratio >= 1.0 else "vanishing"


def _point(data, depth: int, std: float, seed: int, cfg: SweepConfig) -> dict:
    model = build_mlp(data, depth, cfg.width, f"normal:std={std!r}", seed)
    diag = init_diagnostics(model, data)
    run = train_mlp(model, data, lr=cfg.lr, batch_size=cfg.batch_size, steps=cfg.steps, epochs=cfg.epochs, seed=seed)
    chance = math.log(data.num_classes)
    last_ms = diag["act_ms"][-1] if diag["act_ms"] else math.nan
    ratio = last_ms / diag["input_ms"] if diag["input_ms"] > 0 else math.nan
    if not math.isfinite(ratio):
        ratio = math.inf if (math.isnan(last_ms) or last_ms > 0) else 0.0
    return {
        "dataset": data.name, "depth": depth, "width": cfg.width, "std": std, "seed": seed,
        "regime": classify(run.final_train_loss, run.diverged, ratio, chance, cfg.stable_fraction, cfg.signal_bound),
        "trained": run.final_train_loss <= cfg.stable_fraction * chance,
        "final_train_loss": run.final_train_loss, "test_accuracy": run.test_accuracy, "chance_loss": chance,
        "diverged": run.diverged, "steps": run.steps, "act_ratio": ratio, "input_ms": diag["input_ms"],
        "act_var": diag["act_var"], "act_ms": diag["act_ms"], "grad_norm": diag["grad_norm"],
        "init_loss": diag["loss"],
    }


def stability_bands(rows: list[dict], stds: Sequence[float]) -> list[dict]:
    """Per (dataset, depth): the longest contiguous run of stds stable in the majority of seeds.

    ``contains_claim``: every grid std inside the claimed 1e-2..1e-1 lies in the band (the claim at the grid's
    resolution); ``overlaps_claim``: at least one does.
    """
    out = []
    for dataset, depth in dict.fromkeys((r["dataset"], r["depth"]) for r in rows):
        sub = [r for r in rows if r["dataset"] == dataset and r["depth"] == depth]
        majority = []
        for s in stds:
            pts = [r for r in sub if r["std"] == s]
            majority.append(sum(r["regime"] == "stable" for r in pts) * 2 > len(pts))
        runs, start = [], None
        for i, ok in enumerate([*majority, False]):
            if ok and start is None:
                start = i
            elif not ok and start is not None:
                runs.append((start, i - 1))
                start = None
        best = max(runs, key=lambda r: r[1] - r[0], default=None)
        lo, hi = (stds[best[0]], stds[best[1]]) if best else (None, None)
        # the claim at the grid's resolution: the grid points inside [1e-2, 1e-1]
        claim = [i for i, s in enumerate(stds) if CLAIM_BAND[0] <= s <= CLAIM_BAND[1]]
        in_band = [i for i in claim if best and best[0] <= i <= best[1]]
        out.append({
            "dataset": dataset, "depth": depth, "band_lo": lo, "band_hi": hi,
            "stable_points": sum(majority), "contiguous": len(runs) <= 1,
            "claim_points_in_band": f"{len(in_band)}/{len(claim)}",
            "contains_claim": bool(claim) and len(in_band) == len(claim),
            "overlaps_claim": bool(in_band),
        })
    return out


def _aggregate(rows: list[dict], cfg: SweepConfig) -> list[dict]:
    agg = []
    for key in dict.fromkeys((r["dataset"], r["depth"], r["std"]) for r in rows):
        pts = [r for r in rows if (r["dataset"], r["depth"], r["std"]) == key]
        losses = [r["final_train_loss"] for r in pts]
        agg.append({
            "dataset": key[0], "depth": key[1], "std": key[2],
            "loss": float(np.mean(losses)) if all(map(math.isfinite, losses)) else math.inf,
            "acc": float(np.mean([r["test_accuracy"] for r in pts])),
            "act_ratio": float(np.median([r["act_ratio"] for r in pts])),
            "grad_first": float(np.median([r["grad_norm"][0] for r in pts])),
            "grad_head": float(np.median([r["grad_norm"][-1] for r in pts])),
            "regimes": "/".join(str(sum(r["regime"] == g for r in pts)) for g in REGIMES),
            "majority": max(REGIMES, key=lambda g: sum(r["regime"] == g for r in pts)),
        })
    return agg


def _plot(rows: list[dict], bands: list[dict], cfg: SweepConfig, path: Path) -> None:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    datasets = list(dict.fromkeys(r["dataset"] for r in rows))
    fig = Figure(figsize=(4.2 * len(datasets) + 0.8, 6.4), layout="constrained")
    FigureCanvasAgg(fig)
    axes = fig.subplots(2, len(datasets), squeeze=False)
    import matplotlib

    cmap = matplotlib.colormaps["viridis"]
    colors = {d: cmap(i / max(len(cfg.depths) - 1, 1)) for i, d in enumerate(cfg.depths)}
    for j, ds in enumerate(datasets):
        chance = next(r["chance_loss"] for r in rows if r["dataset"] == ds)
        cap = 3 * chance
        for depth in cfg.depths:
            pts = [r for r in rows if r["dataset"] == ds and r["depth"] == depth]
            if not pts:
                continue
            stds = cfg.stds
            loss = [np.mean([min(r["final_train_loss"], cap) for r in pts if r["std"] == s]) for s in stds]
            acc = [np.mean([r["test_accuracy"] for r in pts if r["std"] == s]) for s in stds]
            axes[0][j].plot(stds, loss, "o-", color=colors[depth], ms=3, label=f"depth {depth}")
            axes[1][j].plot(stds, acc, "o-", color=colors[depth], ms=3, label=f"depth {depth}")
            band = next(b for b in bands if b["dataset"] == ds and b["depth"] == depth)
            if band["band_lo"] is not None:
                for ax in (axes[0][j], axes[1][j]):
                    ax.axvspan(band["band_lo"], band["band_hi"], color=colors[depth], alpha=0.12)
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


def _trained_but(rows: list[dict], cfg: SweepConfig) -> str:
    odd = [r for r in rows if r["trained"] and r["regime"] != "stable"]
    if not odd:
        return "none"
    pts = dict.fromkeys(f"{r['dataset']} depth {r['depth']} std {r['std']:.3g}" for r in odd)
    return f"{len(odd)} of {len(rows)} runs (" + "; ".join(pts) + ")"


def _card(cfg: SweepConfig, rows: list[dict], bands: list[dict], agg: list[dict], wall: float, command: str) -> str:
    band_rows = [{**b, "band": f"{fmt(b['band_lo'], 2)} .. {fmt(b['band_hi'], 2)}" if b["band_lo"] else "none"}
                 for b in bands]
    verdicts = []
    for b in bands:
        if b["band_lo"] is None:
            verdicts.append(f"{b['dataset']}, depth {b['depth']}: no std was stable in the majority of seeds")
        elif not b["contains_claim"]:
            verdicts.append(f"{b['dataset']}, depth {b['depth']}: the measured band {fmt(b['band_lo'], 3)}.."
                            f"{fmt(b['band_hi'], 3)} holds {b['claim_points_in_band']} of the grid stds inside "
                            "1e-2..1e-1")
    claim_grid = ", ".join(f"{x:.3g}" for x in cfg.stds if CLAIM_BAND[0] <= x <= CLAIM_BAND[1])
    claim = (f"Grid stds inside the claimed range: {claim_grid or 'none'}. " +
             ("The measured bands contain all of them everywhere." if not verdicts else
             "Where the measurement disagrees with the claim of ~1e-2..1e-1:\n\n" +
             "\n".join(f"- {v}" for v in verdicts)))
    datasets = [HUB_IDS[d] for d in cfg.datasets if d in HUB_IDS]
    body = f"""
# Initial-std sweep of ReLU MLPs: vanishing, stable, exploding

A logarithmic sweep of the initial weight std of fully connected ReLU networks, measured with `hf_varinit`
(every model built by `hf_varinit.from_config(VarInitMLPConfig(...), rule="normal:std=<std>", seed=seed)`).
It tests the claim of *Weight Initialization and Variance Dynamics in Deep Neural Networks and Large Language
Models* that a stability band of roughly **1e-2 to 1e-1** separates the vanishing and exploding regimes.

## Settings

- datasets: {", ".join(cfg.datasets)}; depths: {", ".join(map(str, cfg.depths))}; width {cfg.width}
- stds: {len(cfg.stds)} points log-spaced {fmt(cfg.stds[0], 2)} .. {fmt(cfg.stds[-1], 2)}; seeds: {cfg.seeds}
- every weight (first layer and head included) from N(0, std²), biases zero; ReLU
- plain SGD, lr {cfg.lr}, batch {cfg.batch_size}, {f"{cfg.steps} steps" if cfg.steps else f"{cfg.epochs} epochs"}
  per point; features standardized; max_train {cfg.max_train}
- wall time {wall / 60:.1f} min on this machine ({_threads()} torch threads)

## Criterion (measured numbers only)

With C classes, chance loss L0 = ln C, tau = {cfg.stable_fraction}, L the final full-training-set loss and
`act_ratio` = mean square of the last hidden layer's activation at init / mean square of the input (one batch of
256 training examples):

- **exploding**: the loss became non-finite (diverged), or act_ratio > B, or L > tau·L0 with act_ratio ≥ 1;
- **vanishing**: act_ratio < 1/B, or L > tau·L0 with act_ratio < 1;
- **stable**: otherwise — training brought L to at most tau·L0 *and* the signal at init stayed within a factor
  B = {fmt(cfg.signal_bound, 2)} of the input.

Points that trained (L ≤ tau·L0) although their signal at init was outside that factor:
{_trained_but(rows, cfg)}.

Band = the longest contiguous run of grid stds stable in the majority of seeds (edges are grid points).

## Measured stability band

{markdown_table(band_rows, ["dataset", "depth", "band", "stable_points", "contiguous", "claim_points_in_band"],
                ["dataset", "depth", "band (std)", "stable grid points", "contiguous",
                 "grid stds of 1e-2..1e-1 in band"])}

{claim}

Kaiming (He) std for reference: sqrt(2 / fan_in) = {fmt(math.sqrt(2 / cfg.width), 3)} for the hidden layers at
width {cfg.width}. In a plain-normal init the per-layer gain of the mean square signal is width·std²/2, so the band's
position moves with width and its extent shrinks with depth.

![sweep](sweep.png)

## Per point (mean over seeds)

`regimes` counts vanishing/stable/exploding seeds; `act_ratio` and gradient norms at init are medians over seeds.

{markdown_table(agg, ["dataset", "depth", "std", "loss", "acc", "act_ratio", "grad_first", "grad_head", "regimes"],
                ["dataset", "depth", "std", "final train loss", "test acc", "act ratio at init",
                 "grad norm layer 0", "grad norm head", "v/s/e"])}

Per-seed rows with the activation variance and gradient norm of every layer: `results.csv`; machine-readable
summary: `summary.json`.

## Regenerate

```bash
{command}
```
"""
    return model_card(tags=["initialization", "variance-sweep", "mlp", "relu"], datasets=datasets, body=body)


def _threads() -> int:
    import torch

    return torch.get_num_threads()


def run_sweep(config: SweepConfig | None = None, *, command: str | None = None, log=None, **overrides) -> SweepResult:
    """Run the sweep and write its report folder (``config.output``; None writes nothing).

    Args:
        config (`SweepConfig`, *optional*): the settings; keyword ``overrides`` replace its fields
            (``run_sweep(datasets=["wine"], depths=[3], stds=[1e-3, 1e-1], output="model_cards/sweep-x")``).
        command (`str`, *optional*): the regenerating command written into the card.

    Returns:
        `SweepResult`.
    """
    from hf_varinit.studies.datasets import load_classification

    cfg = SweepConfig(**{**asdict(config or SweepConfig()), **overrides})
    log = log or (lambda msg: print(msg, file=sys.stderr, flush=True))
    t0 = time.perf_counter()
    rows = []
    for name in cfg.datasets:
        data = load_classification(name, seed=0, max_train=cfg.max_train)
        for depth in cfg.depths:
            for std in cfg.stds:
                for seed in cfg.seeds:
                    rows.append(_point(data, depth, std, seed, cfg))
            log(f"sweep: {name} depth {depth} done ({time.perf_counter() - t0:.0f}s)")
    bands = stability_bands(rows, cfg.stds)
    wall = time.perf_counter() - t0
    agg = _aggregate(rows, cfg)
    command = command or _command(cfg)
    summary = {
        "study": "sweep", "config": asdict(cfg), "claim_band": list(CLAIM_BAND), "bands": bands,
        "regime_counts": {g: sum(r["regime"] == g for r in rows) for g in REGIMES},
        "criterion": "exploding: diverged or act_ratio > B or (L > tau*ln C and act_ratio >= 1); vanishing: "
                     "act_ratio < 1/B or (L > tau*ln C and act_ratio < 1); stable: otherwise",
        "wall_seconds": wall, "torch_threads": _threads(), "command": command,
    }
    out = None
    if cfg.output:
        def _csv(p: Path) -> None:
            flat = [{**r, **{k: ";".join(f"{v:.6g}" for v in r[k]) for k in ("act_var", "act_ms", "grad_norm")}}
                    for r in rows]
            p.write_text(csv_text(flat, CSV_COLUMNS))

        md = ("# Sweep results\n\n## Bands\n\n" + markdown_table(bands, list(bands[0])) +
              "\n\n## Per point (mean over seeds)\n\n" + markdown_table(agg, list(agg[0])) + "\n")
        out = write_folder(cfg.output, {
            "results.csv": _csv,
            "results.md": lambda p: p.write_text(md),
            "sweep.png": lambda p: _plot(rows, bands, cfg, p),
            "summary.json": lambda p: atomic_write_json(p, json_safe(summary)),
            "README.md": lambda p: p.write_text(_card(cfg, rows, bands, agg, wall, command)),
        })
        log(f"sweep: wrote {out} ({wall:.0f}s)")
    return SweepResult(rows, bands, summary, out)


def _command(cfg: SweepConfig) -> str:
    parts = ["hf-varinit sweep", "--datasets", *cfg.datasets, "--depths", *map(str, cfg.depths),
             "--stds", *(f"{s:.4g}" for s in cfg.stds), "--seeds", *map(str, cfg.seeds), "--width", str(cfg.width)]
    parts += ["--steps", str(cfg.steps)] if cfg.steps else ["--epochs", str(cfg.epochs)]
    parts += ["--lr", str(cfg.lr), "--batch-size", str(cfg.batch_size), "--stable-fraction", str(cfg.stable_fraction),
              "--signal-bound", f"{cfg.signal_bound:g}"]
    if cfg.max_train:
        parts += ["--max-train", str(cfg.max_train)]
    return " ".join([*parts, *(["--output", cfg.output] if cfg.output else [])])


def add_sweep_arguments(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """Add the ``hf-varinit sweep`` options to ``parser`` (defaults: `SweepConfig`)."""
    d = SweepConfig()
    parser.add_argument("--datasets", nargs="+", default=None, help=f"classification sets (default {d.datasets})")
    parser.add_argument("--depths", nargs="+", type=int, default=None, help=f"hidden layers (default {d.depths})")
    parser.add_argument("--stds", nargs="+", type=float, default=None,
                        help="explicit std grid (default: --num-stds points from --std-min to --std-max)")
    parser.add_argument("--std-min", type=float, default=1e-4)
    parser.add_argument("--std-max", type=float, default=1e1)
    parser.add_argument("--num-stds", type=int, default=13)
    parser.add_argument("--seeds", nargs="+", type=int, default=None, help=f"default {d.seeds}")
    parser.add_argument("--width", type=int, default=None, help=f"hidden width (default {d.width})")
    parser.add_argument("--steps", type=int, default=None, help=f"SGD steps per point (default {d.steps})")
    parser.add_argument("--epochs", type=int, default=None, help="epochs per point (instead of --steps)")
    parser.add_argument("--lr", type=float, default=None, help=f"SGD learning rate (default {d.lr})")
    parser.add_argument("--batch-size", type=int, default=None, help=f"default {d.batch_size}")
    parser.add_argument("--max-train", type=int, default=None, help="subsample the training split")
    parser.add_argument("--stable-fraction", type=float, default=None,
                        help=f"tau: stable needs final train loss <= tau*ln(C) (default {d.stable_fraction})")
    parser.add_argument("--signal-bound", type=float, default=None,
                        help=f"B: stable needs 1/B <= act_ratio at init <= B (default {d.signal_bound:g})")
    parser.add_argument("--output", default=None, help=f"report folder (default {d.output})")
    parser.add_argument("--quick", action="store_true", help="a seconds-long smoke test (wine, depth 3, 3 stds)")
    add_threads_argument(parser)
    return parser


def config_from_args(args: argparse.Namespace) -> SweepConfig:
    base = asdict(SweepConfig())
    if args.quick:
        base.update(QUICK)
    if args.stds is None and not args.quick:
        base["stds"] = default_stds(args.num_stds, args.std_min, args.std_max)
    for name in ("datasets", "depths", "stds", "seeds", "width", "steps", "lr", "batch_size", "max_train",
                 "stable_fraction", "signal_bound", "output"):
        value = getattr(args, name)
        if value is not None:
            base[name] = value
    if args.epochs is not None:
        base["epochs"] = args.epochs
        if args.steps is None:
            base["steps"] = None
    return SweepConfig(**base)


def run_sweep_cli(args: argparse.Namespace) -> int:
    """Entry point of ``hf-varinit sweep``; prints the bands and returns the exit code."""
    apply_threads(args)
    result = run_sweep(config_from_args(args))
    for b in result.bands:
        band = f"{b['band_lo']:.3g} .. {b['band_hi']:.3g}" if b["band_lo"] else "none"
        print(f"{b['dataset']:>14} depth {b['depth']:>2}: stable band {band}")
    print(json.dumps({"output": str(result.output), "wall_seconds": round(result.summary["wall_seconds"], 1)}))
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m hf_varinit.studies.sweep``: the same command as ``hf-varinit sweep``."""
    from hf_varinit.cli.main import subcommand_main

    return subcommand_main("sweep", argv)


if __name__ == "__main__":
    raise SystemExit(main())
