"""Settings of the MLP studies as dataclasses: the sweep of the initial std, the head-to-head comparisons and the
MLP calibration pilot.

Every field carries ``metadata={"help": ...}``; ``hf-varinit sweep``, ``compare --study init|optimal`` and
``calibrate --model mlp`` derive their flags from the fields with the library's one dataclass -> flags path,
`hf_varinit.cli.flags` (one source of truth for the flags, their help and their defaults). The ``*_QUICK`` presets
are the seconds-long smoke tests of ``--quick``. Study reports go under ``runs/`` by default; an existing report
folder is replaced only with ``overwrite=True`` (``--overwrite``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from hf_varinit.errors import ConfigError

__all__ = ["CLAIM_BAND", "COMPARE_QUICK", "STUDIES", "SWEEP_QUICK", "CompareConfig", "MLPPilotConfig", "SweepConfig",
           "default_stds"]

CLAIM_BAND = (1e-2, 1e-1)  # the stability band the second study claims for the initial std
STUDIES = ("init", "optimal")  # the lab's studies of `hf-varinit compare` (--study lm is the library's)
RUNS = "runs"  # where study reports go by default (model_cards/ holds the committed evidence)


def _opt(help_text: str, default: Any = None, *, shown: str | None = None, factory: Any = None, **extra) -> Any:
    """A dataclass field with its ``--flag`` help; ``shown`` is the default as the help states it."""
    metadata = {"help": help_text, **({"shown": shown} if shown is not None else {}), **extra}
    if factory is not None:
        return field(default_factory=factory, metadata=metadata)
    return field(default=default, metadata=metadata)


def default_stds(num: int = 13, lo: float = 1e-4, hi: float = 1e1) -> list[float]:
    """``num`` stds log-spaced from ``lo`` to ``hi`` (13 points from 1e-4 to 1e1 by default)."""
    return [float(s) for s in np.logspace(math.log10(lo), math.log10(hi), num)]


@dataclass
class SweepConfig:
    """Settings of the sweep (each field is a ``--flag`` of ``hf-varinit sweep``)."""

    datasets: list[str] = _opt("classification sets: wine, digits, mnist-subset (online: mnist, fashion_mnist)",
                               factory=lambda: ["wine", "digits", "mnist-subset"])
    depths: list[int] = _opt("hidden layers of the MLPs", factory=lambda: [3, 6, 10])
    stds: list[float] | None = _opt("explicit grid of init stds", shown="--num-stds points from --std-min to --std-max")
    std_min: float = _opt("smallest std of the log grid", 1e-4)
    std_max: float = _opt("largest std of the log grid", 1e1)
    num_stds: int = _opt("points of the log grid", 13)
    seeds: list[int] = _opt("seeds of every point", factory=lambda: [0, 1, 2])
    width: int = _opt("hidden width of every layer", 128)
    widths: list[int] | None = _opt("several hidden widths (replaces --width), e.g. 64 128 256 to test the "
                                    "sqrt(2/width) scaling of the band", shown="--width")
    steps: int | None = _opt("SGD steps per point (wins over --epochs)", 600)
    epochs: int | None = _opt("epochs per point, instead of --steps (give --steps none)")
    lr: float = _opt("plain SGD learning rate", 0.05)
    lrs: list[float] | None = _opt("best-of-k: train every point at each lr, keep the lowest final train loss",
                                   shown="--lr")
    weight_decay: float = _opt("SGD weight decay (L2 term lambda*w added to the gradient)", 0.0)
    batch_size: int = _opt("batch size", 64)
    max_train: int | None = _opt("subsample the training split to this many examples", shown="all")
    stable_fraction: float = _opt("tau: stable needs final train loss <= tau*ln(C)", 0.5)
    signal_bound: float = _opt("B: stable needs 1/B <= act_ratio at init <= B", 1e6)
    output: str | None = _opt("report folder (none: write nothing)", f"{RUNS}/sweep-relu-mlp")
    overwrite: bool = _opt("replace an existing report folder", False)

    def __post_init__(self) -> None:
        if self.stds is None:
            if self.num_stds < 2 or not 0 < self.std_min < self.std_max:
                raise ConfigError(f"sweep: num_stds={self.num_stds}, std_min={self.std_min}, std_max={self.std_max}: "
                                  "need num_stds >= 2 and 0 < std_min < std_max, e.g. 13, 1e-4, 10")
            self.stds = default_stds(self.num_stds, self.std_min, self.std_max)
        if not self.datasets or not self.depths or not self.stds or not self.seeds:
            raise ConfigError("sweep: datasets, depths, stds and seeds must each be non-empty")
        if any(s <= 0 or not math.isfinite(s) for s in self.stds):
            raise ConfigError(f"sweep: stds={self.stds} must all be finite and > 0")
        self.widths = list(self.widths or [self.width])
        self.lrs = list(self.lrs or [self.lr])
        if min(self.depths) < 1 or min(self.widths) < 1:
            raise ConfigError(f"sweep: depths={self.depths} and widths={self.widths} must be >= 1")
        _check_lrs("sweep", self.lrs, self.weight_decay)
        if not 0 < self.stable_fraction < 1:
            raise ConfigError(f"sweep: stable_fraction={self.stable_fraction} must lie in (0, 1), e.g. 0.5")
        if not self.signal_bound > 1:
            raise ConfigError(f"sweep: signal_bound={self.signal_bound} must be > 1, e.g. 1e6")
        self.stds = sorted(float(s) for s in self.stds)


SWEEP_QUICK = dict(datasets=["wine"], depths=[3], stds=[1e-4, 0.3, 10.0], seeds=[0], width=16, steps=80,
                   output=f"{RUNS}/sweep-quick")


@dataclass
class CompareConfig:
    """Settings of ``hf-varinit compare`` (each field is a ``--flag``); None picks the study's default."""

    study: str = _opt("init: Kaiming vs Xavier; optimal: He-normal vs s0²=V(W)", "init", choices=STUDIES)
    dataset: str = _opt("classification set: mnist-subset, digits, wine (online: mnist, fashion_mnist)",
                        "mnist-subset")
    seeds: list[int] = _opt("seeds of every arm", factory=lambda: [0, 1, 2, 3, 4])
    depth: int | None = _opt("hidden layers", shown="init: 8, optimal: 3")
    width: int | None = _opt("hidden width", shown="init: 128, optimal: 256")
    lr: float | None = _opt("plain SGD learning rate", shown="init: 0.01, optimal: 0.05")
    steps: int | None = _opt("SGD steps per run", shown="init: 1000, optimal: 1500")
    batch_size: int = _opt("batch size", 64)
    lrs: list[float] | None = _opt("learning-rate grid: every arm runs at each lr (optimal: pilots per lr); the "
                                   "card picks each arm's best lr and counts divergences", shown="--lr")
    weight_decay: float = _opt("SGD weight decay lambda (L2: lambda*w added to the gradient; with plain SGD the "
                               "same as decoupled decay by lr*lambda per step), pilots included", 0.0)
    eval_every: int | None = _opt("full-train-loss interval", shown="init: steps/50, optimal: 10")
    target_loss: float | None = _opt("train loss of the steps-to-target column (--study lm: eval loss to reach)",
                                     shown="the first of --target-losses")
    target_losses: list[float] | None = _opt("train losses of the steps-to-target columns",
                                             shown="init: 0.5 0.1, optimal: 0.01 0.005")
    alphas: list[float] | None = _opt("optimal: scale arms s0² = alpha·V(W) on every layer (alpha 1 is 'optimal'), "
                                      "paired with He-normal; replaces the optimal/xavier arms", shown="none")
    head_only: bool = _opt("optimal, with --alphas: also the head-only arms (hidden layers at He, head at "
                           "alpha·V(W)_head; alpha 1 is He with the head at V(W)_head)", False)
    max_train: int | None = _opt("subsample the training split to this many examples", shown="all")
    pilot_seed: int = _opt("optimal: seed of the He-normal pilot and of the calibration pilots", 1000)
    record_every: int | None = _opt("optimal: pilot record interval", shown="steps/100")
    calibration_rounds: int = _opt("optimal: most calibration pilots (0: no calibrated arm)", 4)
    calibration_tol: float = _opt("optimal: calibration tolerance (max relative change)", 0.05)
    output: str | None = _opt("report folder ('' writes nothing)", shown=f"{RUNS}/<study>-<dataset>")
    overwrite: bool = _opt("replace an existing report folder", False)

    def __post_init__(self) -> None:
        if self.study not in STUDIES:
            raise ConfigError(f"compare: study={self.study!r} is unknown; valid: {', '.join(STUDIES)}")
        defaults = {"init": dict(depth=8, width=128, lr=0.01, steps=1000),
                    "optimal": dict(depth=3, width=256, lr=0.05, steps=1500)}[self.study]
        for k, v in defaults.items():
            if getattr(self, k) is None:
                setattr(self, k, v)
        if len(self.seeds) < 1 or self.steps < 1 or self.depth < 1 or self.width < 1:
            raise ConfigError(f"compare: seeds={self.seeds}, steps={self.steps}, depth={self.depth}, width="
                              f"{self.width} must be non-empty / >= 1")
        self.eval_every = self.eval_every or (10 if self.study == "optimal" else max(1, self.steps // 50))
        self.record_every = self.record_every or max(1, self.steps // 100)
        if self.target_losses is None:
            self.target_losses = ([self.target_loss] if self.target_loss is not None else
                                  [0.01, 0.005] if self.study == "optimal" else [0.5, 0.1])
        self.target_losses = [float(t) for t in self.target_losses]
        self.target_loss = self.target_losses[0] if self.target_losses else None
        self.lrs = [float(x) for x in (self.lrs or [self.lr])]
        _check_lrs("compare", self.lrs, self.weight_decay)
        if self.alphas is not None and (not self.alphas or any(not (a > 0 and math.isfinite(a)) for a in self.alphas)):
            raise ConfigError(f"compare: alphas={self.alphas} must be finite and > 0, e.g. 0.25 0.5 1 2 4")
        if (self.alphas is not None or self.head_only) and self.study != "optimal":
            raise ConfigError("compare: --alphas / --head-only belong to --study optimal")
        if self.head_only and not self.alphas:
            raise ConfigError("compare: --head-only scales the head by each of --alphas; give --alphas too")
        if self.calibration_rounds < 0 or any(t <= 0 for t in self.target_losses):
            raise ConfigError(f"compare: calibration_rounds={self.calibration_rounds} must be >= 0 and "
                              f"target_losses={self.target_losses} > 0")
        if self.output is None:
            self.output = f"{RUNS}/{self.stem}-{self.dataset}"

    @property
    def stem(self) -> str:
        """The report folder's name stem of the study."""
        return "compare-kaiming-xavier" if self.study == "init" else "optimal-vs-he"


@dataclass
class MLPPilotConfig:
    """Settings of the MLP calibration pilot: the model, the data and the SGD run that measures V(W)."""

    dataset: str = _opt("classification set: mnist-subset, digits, wine", "mnist-subset")
    depth: int = _opt("hidden layers", 3)
    width: int = _opt("hidden width", 256)
    activation: str = _opt("activation of the hidden layers", "relu")
    lr: float = _opt("pilot SGD learning rate", 0.05)
    steps: int = _opt("pilot SGD steps", 1500)
    batch_size: int = _opt("pilot batch size", 64)
    record_every: int = _opt("pilot record interval (steps)", 15)
    seed: int = _opt("init seed and data order (the same every round)", 0)
    max_train: int | None = _opt("subsample the training split to this many examples", shown="all")
    weight_decay: float = _opt("pilot SGD weight decay (0: plain SGD, the studies' setting)", 0.0)

    def __post_init__(self) -> None:
        if self.steps < 1 or self.record_every < 1 or self.steps // self.record_every < 5:
            raise ConfigError(f"MLP pilot: steps={self.steps} / record_every={self.record_every} must give at least "
                              "5 records, e.g. steps=1500, record_every=15")


def _check_lrs(study: str, lrs: list[float], weight_decay: float) -> None:
    if not lrs or any(not (lr > 0 and math.isfinite(lr)) for lr in lrs):
        raise ConfigError(f"{study}: lrs={lrs} must be finite and > 0, e.g. 0.01 0.03 0.1")
    if not (weight_decay >= 0 and math.isfinite(weight_decay)):
        raise ConfigError(f"{study}: weight_decay={weight_decay} must be finite and >= 0, e.g. 0.1")


COMPARE_QUICK = dict(dataset="wine", seeds=[0, 1], depth=2, width=16, steps=60, lr=0.05, calibration_rounds=2)
