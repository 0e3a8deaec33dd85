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

With several ``lrs`` every point trains at each lr and keeps the run with the lowest final training loss
(best-of-k); the regime and the numbers are that run's.

The **stability band** of a (dataset, depth, width) is the longest contiguous run of grid stds that are stable in
the majority of seeds; its edges are grid points (the true edge lies within one grid step outside them). Each edge
is classified by the **cause** of failure at the first grid std outside it (majority over seeds):

* ``vanishing-at-init``: act_ratio < 1/B (the forward signal at init is lost);
* ``exploding-at-init``: act_ratio > B (forward explosion at init);
* ``sgd-divergence``: the signal at init is within B, but training diverged (non-finite loss) at every lr tried;
* ``undertrained``: signal within B and no divergence, but L > tau * L0 after training.

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

from hf_varinit.io_utils import atomic_write_json, check_overwrite, json_safe, write_folder
from hf_varinit.report.tables import markdown_table
from hf_varinit_lab.cards import sweep_card
from hf_varinit_lab.datasets import load_classification
from hf_varinit_lab.mlp_train import build_mlp, init_diagnostics, train_mlp
from hf_varinit_lab.plots import sweep_plot
from hf_varinit_lab.results import RunCache, csv_text
from hf_varinit_lab.study_settings import CLAIM_BAND, SweepConfig

__all__ = ["CAUSES", "CSV_COLUMNS", "REGIMES", "SweepConfig", "SweepResult", "classify", "failure_cause",
           "run_sweep", "stability_bands", "sweep_command"]

REGIMES = ("vanishing", "stable", "exploding")
CAUSES = ("ok", "vanishing-at-init", "exploding-at-init", "sgd-divergence", "undertrained")
CSV_COLUMNS = [
    "dataset", "depth", "width", "std", "seed", "regime", "cause", "lr", "diverged_lrs", "trained",
    "final_train_loss", "test_accuracy", "chance_loss", "diverged", "steps", "act_ratio", "input_ms", "act_var",
    "act_ms", "grad_norm", "init_loss",
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


def failure_cause(regime: str, diverged: bool, act_ratio: float, bound: float) -> str:
    """Why a point is not stable (see the module docstring); ``ok`` when it is."""
    if regime == "stable":
        return "ok"
    if act_ratio > bound:
        return "exploding-at-init"
    if act_ratio < 1.0 / bound:
        return "vanishing-at-init"
    return "sgd-divergence" if diverged else "undertrained"


def _point(data, depth: int, width: int, std: float, seed: int, cfg: SweepConfig, cache: RunCache) -> dict:
    key = f"{data.name}|{depth}|{width}|{std!r}|{seed}"
    if (done := cache.get(key)) is not None:
        return done
    build = lambda: build_mlp(data, depth, width, f"normal:std={std!r}", seed)  # noqa: E731
    diag = init_diagnostics(build(), data)
    runs = {lr: train_mlp(build(), data, lr=lr, weight_decay=cfg.weight_decay, batch_size=cfg.batch_size,
                          steps=cfg.steps, epochs=cfg.epochs, seed=seed) for lr in cfg.lrs}
    lr = min(runs, key=lambda x: (runs[x].diverged, runs[x].final_train_loss))  # best of k: lowest final loss
    run = runs[lr]
    chance = math.log(data.num_classes)
    last_ms = diag["act_ms"][-1] if diag["act_ms"] else math.nan
    ratio = last_ms / diag["input_ms"] if diag["input_ms"] > 0 else math.nan
    if not math.isfinite(ratio):
        ratio = math.inf if (math.isnan(last_ms) or last_ms > 0) else 0.0
    regime = classify(run.final_train_loss, run.diverged, ratio, chance, cfg.stable_fraction, cfg.signal_bound)
    row = {
        "dataset": data.name, "depth": depth, "width": width, "std": std, "seed": seed, "regime": regime,
        "cause": failure_cause(regime, run.diverged, ratio, cfg.signal_bound), "lr": lr,
        "diverged_lrs": ";".join(f"{x:g}" for x, r in runs.items() if r.diverged),
        "trained": run.final_train_loss <= cfg.stable_fraction * chance,
        "final_train_loss": run.final_train_loss, "test_accuracy": run.test_accuracy, "chance_loss": chance,
        "diverged": run.diverged, "steps": run.steps, "act_ratio": ratio, "input_ms": diag["input_ms"],
        "act_var": diag["act_var"], "act_ms": diag["act_ms"], "grad_norm": diag["grad_norm"],
        "init_loss": diag["loss"],
    }
    cache.put(key, row)
    return row


def _edge_cause(rows: list[dict], stds: Sequence[float], i: int) -> str | None:
    """The majority failure cause over seeds at grid std ``i`` (None outside the grid or without causes)."""
    pts = [r["cause"] for r in rows if r["std"] == stds[i] and "cause" in r] if 0 <= i < len(stds) else []
    return max(dict.fromkeys(pts), key=pts.count) if pts else None


def stability_bands(rows: list[dict], stds: Sequence[float]) -> list[dict]:
    """Per (dataset, depth, width): the longest contiguous run of stds stable in the majority of seeds.

    ``contains_claim``: every grid std inside the claimed 1e-2..1e-1 lies in the band (the claim at the grid's
    resolution); ``overlaps_claim``: at least one does. ``lo_cause`` / ``hi_cause``: the majority failure cause at
    the grid std just outside each edge (None at the grid's end). ``he_std``: sqrt(2 / width).
    """
    out = []
    for dataset, depth, width in dict.fromkeys((r["dataset"], r["depth"], r.get("width")) for r in rows):
        sub = [r for r in rows if r["dataset"] == dataset and r["depth"] == depth and r.get("width") == width]
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
            "dataset": dataset, "depth": depth, "width": width, "band_lo": lo, "band_hi": hi,
            "lo_cause": _edge_cause(sub, stds, best[0] - 1) if best else None,
            "hi_cause": _edge_cause(sub, stds, best[1] + 1) if best else None,
            "he_std": math.sqrt(2 / width) if width else None,
            "stable_points": sum(majority), "contiguous": len(runs) <= 1,
            "claim_points_in_band": f"{len(in_band)}/{len(claim)}",
            "contains_claim": bool(claim) and len(in_band) == len(claim),
            "overlaps_claim": bool(in_band),
        })
    return out


def _aggregate(rows: list[dict]) -> list[dict]:
    agg = []
    for key in dict.fromkeys((r["dataset"], r["depth"], r["width"], r["std"]) for r in rows):
        pts = [r for r in rows if (r["dataset"], r["depth"], r["width"], r["std"]) == key]
        losses = [r["final_train_loss"] for r in pts]
        causes = [r["cause"] for r in pts]
        agg.append({
            "dataset": key[0], "depth": key[1], "width": key[2], "std": key[3],
            "cause": max(dict.fromkeys(causes), key=causes.count),
            "lr": "/".join(f"{r['lr']:g}" for r in pts),
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
             "--stds", *(f"{s:.4g}" for s in cfg.stds), "--seeds", *map(str, cfg.seeds),
             *(["--width", str(cfg.widths[0])] if len(cfg.widths) == 1 else ["--widths", *map(str, cfg.widths)])]
    parts += ["--steps", str(cfg.steps)] if cfg.steps else ["--epochs", str(cfg.epochs)]
    parts += ["--lr", str(cfg.lrs[0])] if len(cfg.lrs) == 1 else ["--lrs", *(f"{x:g}" for x in cfg.lrs)]
    if cfg.weight_decay:
        parts += ["--weight-decay", f"{cfg.weight_decay:g}"]
    parts += ["--batch-size", str(cfg.batch_size), "--stable-fraction", str(cfg.stable_fraction),
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
    base = asdict(config or SweepConfig())
    for single, grid in (("width", "widths"), ("lr", "lrs")):  # a single value given wins over the filled-in grid
        if single in overrides and grid not in overrides:
            base[grid] = None
    cfg = SweepConfig(**{**base, **overrides})
    if cfg.output:
        check_overwrite(cfg.output, cfg.overwrite)  # before the work, not after it
    log = log or (lambda msg: print(msg, file=sys.stderr, flush=True))
    t0 = time.perf_counter()
    cache = RunCache(cfg.output, {k: v for k, v in asdict(cfg).items()
                                  if k not in ("output", "overwrite", "datasets", "depths", "widths", "width", "stds",
                                               "std_min", "std_max", "num_stds", "seeds")})
    rows = []
    for name in cfg.datasets:
        data = load_classification(name, seed=0, max_train=cfg.max_train)
        for depth in cfg.depths:
            for width in cfg.widths:
                rows += [_point(data, depth, width, std, seed, cfg, cache) for std in cfg.stds for seed in cfg.seeds]
                log(f"sweep: {name} depth {depth} width {width} done ({time.perf_counter() - t0:.0f}s)")
    bands = stability_bands(rows, cfg.stds)
    wall = time.perf_counter() - t0
    agg = _aggregate(rows)
    summary = {
        "study": "sweep", "config": asdict(cfg), "claim_band": list(CLAIM_BAND), "bands": bands,
        "regime_counts": {g: sum(r["regime"] == g for r in rows) for g in REGIMES},
        "cause_counts": {c: sum(r["cause"] == c for r in rows) for c in CAUSES},
        "criterion": "exploding: diverged or act_ratio > B or (L > tau*ln C and act_ratio >= 1); vanishing: "
                     "act_ratio < 1/B or (L > tau*ln C and act_ratio < 1); stable: otherwise",
        "wall_seconds": wall, "torch_threads": torch.get_num_threads(), "command": command or sweep_command(cfg),
    }
    out = None
    if cfg.output:
        out = _write(cfg, rows, bands, agg, summary)
        cache.clear()
        log(f"sweep: wrote {out} ({wall:.0f}s)")
    return SweepResult(rows, bands, summary, out)
