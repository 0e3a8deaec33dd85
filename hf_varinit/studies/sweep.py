"""A logarithmic sweep of the initial weight std of ReLU MLPs, with a stability band (``hf-varinit sweep``).

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

Example:
    >>> result = run_sweep(SweepConfig(datasets=["wine"], depths=[3], stds=[1e-3, 1e-1], output=None))
    >>> result.bands[0]["band_lo"], result.bands[0]["band_hi"]  # doctest: +SKIP
"""

from __future__ import annotations

import math
import sys
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch

from hf_varinit.calibrate import check_output
from hf_varinit.io_utils import atomic_write_json, json_safe
from hf_varinit.report.tables import markdown_table
from hf_varinit.studies.cards import sweep_card
from hf_varinit.studies.configs import CLAIM_BAND, SweepConfig
from hf_varinit.studies.datasets import load_classification
from hf_varinit.studies.mlp_train import build_mlp, init_diagnostics, train_mlp
from hf_varinit.studies.plots import sweep_plot
from hf_varinit.studies.render import csv_text, write_folder

__all__ = ["CSV_COLUMNS", "REGIMES", "SweepConfig", "SweepResult", "classify", "run_sweep", "stability_bands",
           "sweep_command"]

REGIMES = ("vanishing", "stable", "exploding")
CSV_COLUMNS = [
    "dataset", "depth", "width", "std", "seed", "regime", "trained", "final_train_loss", "test_accuracy", "chance_loss",
    "diverged", "steps", "act_ratio", "input_ms", "act_var", "act_ms", "grad_norm", "init_loss",
]


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


def _aggregate(rows: list[dict]) -> list[dict]:
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


def sweep_command(cfg: SweepConfig) -> str:
    """The ``hf-varinit sweep`` command line that regenerates ``cfg``'s report (written into its card)."""
    parts = ["hf-varinit sweep", "--datasets", *cfg.datasets, "--depths", *map(str, cfg.depths),
             "--stds", *(f"{s:.4g}" for s in cfg.stds), "--seeds", *map(str, cfg.seeds), "--width", str(cfg.width)]
    parts += ["--steps", str(cfg.steps)] if cfg.steps else ["--epochs", str(cfg.epochs)]
    parts += ["--lr", str(cfg.lr), "--batch-size", str(cfg.batch_size), "--stable-fraction", str(cfg.stable_fraction),
              "--signal-bound", f"{cfg.signal_bound:g}"]
    if cfg.max_train:
        parts += ["--max-train", str(cfg.max_train)]
    return " ".join([*parts, *(["--output", cfg.output] if cfg.output else [])])


def _write(cfg: SweepConfig, rows: list[dict], bands: list[dict], agg: list[dict], summary: dict) -> Path:
    def _csv(p: Path) -> None:
        flat = [{**r, **{k: ";".join(f"{v:.6g}" for v in r[k]) for k in ("act_var", "act_ms", "grad_norm")}}
                for r in rows]
        p.write_text(csv_text(flat, CSV_COLUMNS))

    md = ("# Sweep results\n\n## Bands\n\n" + markdown_table(bands) +
          "\n\n## Per point (mean over seeds)\n\n" + markdown_table(agg) + "\n")
    return write_folder(cfg.output, {
        "results.csv": _csv,
        "results.md": lambda p: p.write_text(md),
        "sweep.png": lambda p: sweep_plot(rows, bands, cfg, p),
        "summary.json": lambda p: atomic_write_json(p, json_safe(summary)),
        "README.md": lambda p: p.write_text(sweep_card(cfg, rows, bands, agg, summary)),
    }, overwrite=cfg.overwrite)


def run_sweep(config: SweepConfig | None = None, *, command: str | None = None, log=None, **overrides) -> SweepResult:
    """Run the sweep and write its report folder (``config.output``; None writes nothing).

    Args:
        config (`SweepConfig`, *optional*): the settings; keyword ``overrides`` replace its fields
            (``run_sweep(datasets=["wine"], depths=[3], stds=[1e-3, 1e-1], output="runs/sweep-x")``).
        command (`str`, *optional*): the regenerating command written into the card (default: `sweep_command`).
        log (`Callable[[str], None]`, *optional*): progress messages (default: stderr).

    Returns:
        `SweepResult`.
    """
    cfg = SweepConfig(**{**asdict(config or SweepConfig()), **overrides})
    if cfg.output:
        check_output(cfg.output, cfg.overwrite)  # before the work, not after it
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
    agg = _aggregate(rows)
    summary = {
        "study": "sweep", "config": asdict(cfg), "claim_band": list(CLAIM_BAND), "bands": bands,
        "regime_counts": {g: sum(r["regime"] == g for r in rows) for g in REGIMES},
        "criterion": "exploding: diverged or act_ratio > B or (L > tau*ln C and act_ratio >= 1); vanishing: "
                     "act_ratio < 1/B or (L > tau*ln C and act_ratio < 1); stable: otherwise",
        "wall_seconds": wall, "torch_threads": torch.get_num_threads(), "command": command or sweep_command(cfg),
    }
    out = None
    if cfg.output:
        out = _write(cfg, rows, bands, agg, summary)
        log(f"sweep: wrote {out} ({wall:.0f}s)")
    return SweepResult(rows, bands, summary, out)
