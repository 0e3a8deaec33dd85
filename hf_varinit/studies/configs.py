"""Settings of the MLP studies as dataclasses: the sweep of the initial std and the head-to-head comparisons.

``hf-varinit sweep`` and ``hf-varinit compare`` derive their flags from these; the ``*_QUICK`` presets are the
seconds-long smoke tests of ``--quick``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

from hf_varinit.errors import ConfigError

__all__ = ["CLAIM_BAND", "COMPARE_QUICK", "STUDIES", "SWEEP_QUICK", "CompareConfig", "SweepConfig", "default_stds"]

CLAIM_BAND = (1e-2, 1e-1)  # the stability band the second study claims for the initial std
STUDIES = ("init", "optimal")


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
    output: str | None = "model_cards/sweep-relu-mlp"  # None: write nothing

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


SWEEP_QUICK = dict(datasets=["wine"], depths=[3], stds=[1e-4, 0.3, 10.0], seeds=[0], width=16, steps=80,
                   output="model_cards/sweep-quick")


@dataclass
class CompareConfig:
    """Settings of ``hf-varinit compare`` (each field is a ``--flag``); None picks the study's default."""

    study: str = "init"
    dataset: str = "mnist-subset"
    seeds: list[int] = field(default_factory=lambda: [0, 1, 2, 3, 4])
    depth: int | None = None  # init: 8, optimal: 3
    width: int | None = None  # init: 128, optimal: 256
    lr: float | None = None  # init: 0.01, optimal: 0.05
    steps: int | None = None  # init: 1000, optimal: 1500
    batch_size: int = 64
    eval_every: int | None = None  # default: steps // 50
    target_loss: float | None = None  # default: 0.5
    max_train: int | None = None
    pilot_seed: int = 1000  # optimal: seed of the He-normal pilot and of the calibration pilots
    record_every: int | None = None  # optimal: pilot record interval (default steps // 100)
    calibration_rounds: int = 4
    calibration_tol: float = 0.05
    output: str | None = None  # default model_cards/<study stem>-<dataset>; "" writes nothing

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
        self.eval_every = self.eval_every or max(1, self.steps // 50)
        self.record_every = self.record_every or max(1, self.steps // 100)
        self.target_loss = 0.5 if self.target_loss is None else self.target_loss
        if self.output is None:
            self.output = f"model_cards/{self.stem}-{self.dataset}"

    @property
    def stem(self) -> str:
        """The report folder's name stem of the study."""
        return "compare-kaiming-xavier" if self.study == "init" else "optimal-vs-he"


COMPARE_QUICK = dict(dataset="wine", seeds=[0, 1], depth=2, width=16, steps=60, lr=0.05, calibration_rounds=2)
