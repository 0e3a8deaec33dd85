"""``hf-varinit calibrate``: the MLP pilot, the pilot registry (MLP, GPT-2, Llama) and the command line.

The fixed-point iteration itself is `hf_varinit.calibrate.calibrate`.

Example:
    >>> result = calibrate_mlp("digits", depth=3, width=64, steps=400, rounds=4, output="model_cards/mlp-cal")
    >>> model = hf_varinit.from_config(cfg, rule=result.rule())  # or rule="optimal:report=model_cards/mlp-cal"
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from hf_varinit.calibrate import CalibrationResult, calibrate
from hf_varinit.errors import ConfigError, NonFiniteLossError
from hf_varinit.report.report import AnalysisOptions
from hf_varinit.studies.render import add_threads_argument, apply_threads

__all__ = [
    "PILOT_FACTORIES",
    "MLPPilot",
    "add_calibrate_arguments",
    "calibrate_mlp",
    "register_pilot_factory",
    "run_calibrate_cli",
]

PilotFactory = Callable[[argparse.Namespace], tuple[Callable[[Any], Any], Callable[[Any], Any], dict]]


# ----------------------------------------------------------------------------- the MLP pilot


@dataclass
class MLPPilot:
    """Settings of the MLP pilot: the model, the data and the training run that measures V(W)."""

    dataset: str = "mnist-subset"
    depth: int = 3
    width: int = 256
    activation: str = "relu"
    lr: float = 0.05
    steps: int = 1500
    batch_size: int = 64
    record_every: int = 15
    seed: int = 0
    max_train: int | None = None
    weight_decay: float = 0.0  # 0: plain SGD, the studies' setting

    def __post_init__(self) -> None:
        if self.steps < 1 or self.record_every < 1 or self.steps // self.record_every < 5:
            raise ConfigError(f"MLP pilot: steps={self.steps} / record_every={self.record_every} must give at least "
                              "5 records, e.g. steps=1500, record_every=15")

    def make(self):
        """``(build_model, pilot, data)`` for `calibrate`."""
        from hf_varinit.studies.datasets import load_classification
        from hf_varinit.studies.mlp_train import build_mlp, run_stats, train_mlp

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
    command: str | None = None,
    log: Callable[[str], None] | None = None,
) -> CalibrationResult:
    """Calibrate s0^2 = V(W) for a ReLU MLP trained with plain SGD on ``data_name``; write ``output`` if given.

    Every round uses the same init seed and data order, so the round-to-round map is deterministic.
    """
    settings = MLPPilot(data_name, depth, width, activation, lr, steps, batch_size, record_every, seed, max_train,
                        weight_decay)
    build_model, pilot, _ = settings.make()
    t0 = time.perf_counter()
    result = calibrate(build_model, pilot, rounds=rounds, tol=tol, initial_rule=initial_rule, options=options,
                       log=log)
    result.metadata = {**dataclasses.asdict(settings), "optimizer": "sgd (plain)", "initial_rule": str(initial_rule),
                       "rounds_max": rounds, "wall_seconds": round(time.perf_counter() - t0, 1)}
    if output:
        result.save(output, title=f"Calibrated optimal init: ReLU MLP {depth}x{width} on {data_name}",
                    command=command)
    return result


# ----------------------------------------------------------------------------- CLI


def _mlp_factory(args: argparse.Namespace):
    settings = MLPPilot(args.dataset, args.depth, args.width, args.activation, args.lr, args.steps, args.batch_size,
                        args.record_every, args.seed, args.max_train, args.weight_decay)
    build_model, pilot, _ = settings.make()
    return build_model, pilot, {**dataclasses.asdict(settings), "optimizer": "sgd (plain)"}


def _lm_factory(args: argparse.Namespace):
    if not args.config:
        raise ConfigError(f"calibrate --model {args.model} needs --config <pretraining YAML>, "
                          "e.g. configs/gpt2-12l-tiny.yaml")
    from hf_varinit.train.pilot import lm_pilot_factory

    return lm_pilot_factory(args)


PILOT_FACTORIES: dict[str, PilotFactory] = {"mlp": _mlp_factory, "gpt2": _lm_factory, "llama": _lm_factory}


def register_pilot_factory(name: str, factory: PilotFactory, *, overwrite: bool = False) -> None:
    """Plug a model into ``hf-varinit calibrate --model <name>``.

    ``factory(args) -> (build_model, pilot, metadata)``, where ``args`` is the parsed namespace (``args.config``
    holds ``--config``, e.g. a GPT-2 YAML). ``build_model(rule)`` builds a fresh model with that init rule and
    ``pilot(model)`` pretrains it and returns its `VarianceStats`.
    """
    if name in PILOT_FACTORIES and not overwrite:
        raise ConfigError(f"a calibration pilot named {name!r} exists; pass overwrite=True to replace it")
    PILOT_FACTORIES[name] = factory


QUICK = dict(dataset="wine", depth=2, width=16, steps=150, record_every=5, rounds=4, tol=0.05)


def add_calibrate_arguments(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """Add the ``hf-varinit calibrate`` options to ``parser``."""
    d = MLPPilot()
    parser.add_argument("--model", default=None,
                        help="pilot model: 'mlp' (default), or one registered with register_pilot_factory "
                             "(default with --config: 'gpt2')")
    parser.add_argument("--config", default=None, help="a model/training YAML for non-MLP pilots (e.g. GPT-2)")
    parser.add_argument("--dataset", default=None, help=f"MLP: classification set (default {d.dataset})")
    parser.add_argument("--depth", type=int, default=None, help=f"MLP hidden layers (default {d.depth})")
    parser.add_argument("--width", type=int, default=None, help=f"MLP hidden width (default {d.width})")
    parser.add_argument("--activation", default=None, help=f"MLP activation (default {d.activation})")
    parser.add_argument("--lr", type=float, default=None, help=f"pilot SGD learning rate (default {d.lr})")
    parser.add_argument("--steps", type=int, default=None, help=f"pilot steps (default {d.steps})")
    parser.add_argument("--batch-size", type=int, default=None, help=f"default {d.batch_size}")
    parser.add_argument("--record-every", type=int, default=None, help=f"default {d.record_every}")
    parser.add_argument("--seed", type=int, default=None, help="init seed and data order (same every round)")
    parser.add_argument("--max-train", type=int, default=None)
    parser.add_argument("--weight-decay", type=float, default=None,
                        help="pilot SGD weight decay (default 0: plain SGD)")
    parser.add_argument("--rounds", type=int, default=None, help="most pilot runs (default 4)")
    parser.add_argument("--tol", type=float, default=None, help="max relative change to stop at (default 0.05)")
    parser.add_argument("--initial-rule", default="kaiming", help="init of round 0 (default kaiming)")
    parser.add_argument("--drift-tol", type=float, default=None, help="steady-state drift tolerance (default 0.05)")
    parser.add_argument("--window-fraction", type=float, default=None, help="trailing window (default 0.25)")
    parser.add_argument("--output", default=None, help="report folder (default model_cards/mlp-calibrated-<dataset>)")
    parser.add_argument("--quick", action="store_true", help="a seconds-long smoke test (wine, 2x16)")
    add_threads_argument(parser)
    return parser


def _resolve_args(args: argparse.Namespace) -> argparse.Namespace:
    if args.model is None:
        args.model = "gpt2" if args.config else "mlp"
    d = {**dataclasses.asdict(MLPPilot()), "rounds": 4, "tol": 0.05}
    if args.model != "mlp":  # language-model pilots take their settings from the YAML
        d = {"rounds": 4, "tol": 0.05}
    if args.quick:
        d.update(QUICK)
    for k, v in d.items():
        if getattr(args, k, None) is None:
            setattr(args, k, v)
    if args.output is None:
        args.output = (f"model_cards/mlp-calibrated-{args.dataset}{'-quick' if args.quick else ''}"
                       if args.model == "mlp" else f"model_cards/{args.model}-calibrated")
    return args


def _command(args: argparse.Namespace) -> str:
    if args.model != "mlp":
        return f"hf-varinit calibrate --model {args.model} --config {args.config} --output {args.output}"
    parts = ["hf-varinit calibrate --model mlp", f"--dataset {args.dataset}", f"--depth {args.depth}",
             f"--width {args.width}", f"--activation {args.activation}", f"--lr {args.lr}", f"--steps {args.steps}",
             f"--batch-size {args.batch_size}", f"--record-every {args.record_every}", f"--seed {args.seed}",
             f"--rounds {args.rounds}", f"--tol {args.tol}", f"--initial-rule {args.initial_rule}"]
    if args.max_train:
        parts.append(f"--max-train {args.max_train}")
    if args.weight_decay:
        parts.append(f"--weight-decay {args.weight_decay}")
    for flag in ("drift_tol", "window_fraction"):
        if getattr(args, flag) is not None:
            parts.append(f"--{flag.replace('_', '-')} {getattr(args, flag)}")
    return " ".join([*parts, f"--output {args.output}"])


def run_calibrate_cli(args: argparse.Namespace, pilot_factories: Mapping[str, PilotFactory] | None = None) -> int:
    """Entry point of ``hf-varinit calibrate``; ``pilot_factories`` adds models (e.g. ``{"gpt2": factory}``)."""
    args = _resolve_args(args)
    apply_threads(args)
    factories = {**PILOT_FACTORIES, **(pilot_factories or {})}
    if args.model not in factories:
        raise ConfigError(f"calibrate: --model {args.model!r} has no pilot; available: {sorted(factories)} "
                          "(register one with hf_varinit.cli.calibrate.register_pilot_factory)")
    build_model, pilot, meta = factories[args.model](args)
    opts = {k: getattr(args, k) for k in ("drift_tol", "window_fraction") if getattr(args, k) is not None}
    t0 = time.perf_counter()
    result = calibrate(build_model, pilot, rounds=args.rounds, tol=args.tol, initial_rule=args.initial_rule,
                       options=AnalysisOptions(**opts))
    result.metadata = {**meta, "initial_rule": args.initial_rule, "rounds_max": args.rounds,
                       "wall_seconds": round(time.perf_counter() - t0, 1)}
    title = (f"Calibrated optimal init: ReLU MLP {args.depth}x{args.width} on {args.dataset}" if args.model == "mlp"
             else None)
    out = result.save(args.output, title=title, command=_command(args))
    print(json.dumps({"output": str(out), "converged": result.converged, "rounds": len(result.history),
                      "max_rel_change": [round(h["max_rel_change"], 5) for h in result.history],
                      "wall_seconds": result.metadata["wall_seconds"]}))
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m hf_varinit.cli.calibrate``: the same command as ``hf-varinit calibrate``."""
    from hf_varinit.cli.main import subcommand_main

    return subcommand_main("calibrate", argv)


if __name__ == "__main__":
    raise SystemExit(main())
