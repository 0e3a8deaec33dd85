"""The MLP pilot of the calibration s0^2 = V(W): a ReLU MLP trained with plain SGD on a classification set.

``hf-varinit calibrate --model mlp`` finds it through the lab's ``hf_varinit.pilots`` entry point
(`hf_varinit_lab.cli.calibrate.MLP_PILOT`); importing this module registers nothing. `calibrate_mlp` runs it from
Python.

Example:
    >>> result = calibrate_mlp("digits", depth=3, width=64, steps=400, rounds=4, output="runs/mlp-cal")
    >>> model = hf_varinit.from_config(cfg, rule=result.rule())  # or rule="optimal:report=runs/mlp-cal"
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from pathlib import Path
from typing import Any

from hf_varinit.calibrate import CalibrationResult, calibrate_pilot
from hf_varinit.errors import NonFiniteLossError
from hf_varinit.report.options import AnalysisOptions
from hf_varinit_lab.datasets import load_classification
from hf_varinit_lab.mlp_train import build_mlp, run_stats, train_mlp
from hf_varinit_lab.study_settings import MLPPilotConfig

__all__ = ["MLPPilot", "calibrate_mlp", "mlp_pilot_factory", "mlp_title"]


class MLPPilot(MLPPilotConfig):
    """The MLP pilot: `MLPPilotConfig`'s settings (model, data, SGD run) and the functions that run it."""

    def make(self):
        """``(build_model, pilot, data)`` for `hf_varinit.calibrate.calibrate`."""
        data = load_classification(self.dataset, seed=0, max_train=self.max_train)

        def build_model(rule):
            return build_mlp(data, self.depth, self.width, rule, self.seed, activation=self.activation)

        def pilot(model):
            run = train_mlp(model, data, lr=self.lr, steps=self.steps, batch_size=self.batch_size, seed=self.seed,
                            weight_decay=self.weight_decay, record_every=self.record_every, eval=False,
                            rule=getattr(model, "varinit_init_rule", None))
            if run.diverged:
                raise NonFiniteLossError(f"MLP pilot diverged at step {run.steps} (lr={self.lr}); lower --lr")
            return run_stats(run, metadata={"source": "training", "optimizer": "sgd", "lr": self.lr,
                                            "weight_decay": self.weight_decay,
                                            "batch_size": self.batch_size, "seed": self.seed,
                                            "dataset": self.dataset, "steps": self.steps})

        return build_model, pilot, data


def mlp_pilot_factory(settings: Any):
    """The ``mlp`` pilot factory: ``settings`` holds `MLPPilot`'s fields as attributes (an `MLPPilot` does)."""
    pilot_settings = MLPPilot(**{f.name: getattr(settings, f.name) for f in dataclasses.fields(MLPPilot)})
    build_model, pilot, _ = pilot_settings.make()
    return build_model, pilot, {**dataclasses.asdict(pilot_settings), "optimizer": "sgd (plain)"}


def mlp_title(settings: Any) -> str:
    """The card title of an MLP calibration."""
    return f"Calibrated optimal init: ReLU MLP {settings.depth}x{settings.width} on {settings.dataset}"


def calibrate_mlp(
    data_name: str = "mnist-subset",
    depth: int = 3,
    width: int = 256,
    *,
    lr: float = 0.05,
    steps: int = 1500,
    batch_size: int = 64,
    record_every: int = 15,
    seed: int = 0,
    max_train: int | None = None,
    activation: str = "relu",
    weight_decay: float = 0.0,
    rounds: int = 4,
    tol: float = 0.05,
    initial_rule: str | dict = "kaiming",
    options: AnalysisOptions | None = None,
    output: str | Path | None = None,
    overwrite: bool = False,
    command: str | None = None,
    log: Callable[[str], None] | None = None,
) -> CalibrationResult:
    """Calibrate s0^2 = V(W) for a ReLU MLP trained with plain SGD on ``data_name``; write ``output`` if given.

    Every round uses the same init seed and data order, so the round-to-round map is deterministic.

    Args:
        data_name (`str`): a classification set (``wine``, ``digits``, ``mnist-subset``; online ``mnist``).
        depth (`int`), width (`int`), activation (`str`): the MLP's hidden layers.
        lr, steps, batch_size, record_every, seed, max_train, weight_decay: the pilot run (see `MLPPilot`).
        rounds, tol, initial_rule, options, log: as for `hf_varinit.calibrate.calibrate`.
        output (`str` or `Path`, *optional*): the report folder; ``command`` goes into its card.
        overwrite (`bool`): replace ``output`` if it exists (otherwise that is a `ReportError`, before any work).
    """
    settings = MLPPilot(data_name, depth, width, activation, lr, steps, batch_size, record_every, seed, max_train,
                        weight_decay)
    return calibrate_pilot(mlp_pilot_factory, settings, rounds=rounds, tol=tol, initial_rule=initial_rule,
                           options=options, output=output, overwrite=overwrite, title=mlp_title(settings),
                           command=command, log=log)
