"""``hf-varinit compare``: init rules head to head on ReLU MLPs (`hf_varinit.studies.compare`).

    hf-varinit compare --study init --dataset mnist-subset
    hf-varinit compare --study optimal --dataset mnist-subset
    hf-varinit compare --study optimal --quick     # seconds: a smoke test
"""

from __future__ import annotations

import argparse
import json

from hf_varinit.studies.cards import summary_table
from hf_varinit.studies.compare import run_compare
from hf_varinit.studies.configs import COMPARE_QUICK, STUDIES, CompareConfig

# flags that set the CompareConfig field of the same name when given
_FIELDS = ("dataset", "seeds", "depth", "width", "lr", "steps", "batch_size", "eval_every", "target_loss", "max_train",
           "pilot_seed", "record_every", "calibration_rounds", "calibration_tol", "output")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Add the ``hf-varinit compare`` options to ``parser`` (defaults: `CompareConfig`)."""
    parser.add_argument("--study", choices=STUDIES, default="init", help="init: Kaiming vs Xavier; optimal: "
                        "He-normal vs s0²=V(W)")
    parser.add_argument("--dataset", default=None, help="mnist-subset (default), digits, wine; online: mnist, "
                        "fashion_mnist")
    parser.add_argument("--seeds", nargs="+", type=int, default=None, help="default 0 1 2 3 4")
    parser.add_argument("--depth", type=int, default=None, help="hidden layers (init: 8, optimal: 3)")
    parser.add_argument("--width", type=int, default=None, help="hidden width (init: 128, optimal: 256)")
    parser.add_argument("--lr", type=float, default=None, help="plain SGD lr (init: 0.01, optimal: 0.05)")
    parser.add_argument("--steps", type=int, default=None, help="SGD steps per run (init: 1000, optimal: 1500)")
    parser.add_argument("--batch-size", type=int, default=None, help="default 64")
    parser.add_argument("--eval-every", type=int, default=None, help="full-train-loss interval (default steps/50)")
    parser.add_argument("--target-loss", type=float, default=None, help="for steps-to-target (default 0.5)")
    parser.add_argument("--max-train", type=int, default=None, help="subsample the training split")
    parser.add_argument("--pilot-seed", type=int, default=None, help="optimal: pilot seed (default 1000)")
    parser.add_argument("--record-every", type=int, default=None, help="optimal: pilot record interval")
    parser.add_argument("--calibration-rounds", type=int, default=None, help="optimal: most calibration pilots (4)")
    parser.add_argument("--calibration-tol", type=float, default=None, help="optimal: calibration tol (0.05)")
    parser.add_argument("--output", default=None, help="report folder (default model_cards/<study>-<dataset>)")
    parser.add_argument("--quick", action="store_true", help="a seconds-long smoke test (wine, 2 seeds, tiny)")


def config_from_args(args: argparse.Namespace) -> CompareConfig:
    """The `CompareConfig` of parsed flags: the ``--quick`` preset if asked, then the flags given."""
    values: dict = {"study": args.study, **(COMPARE_QUICK if args.quick else {})}
    values.update({name: getattr(args, name) for name in _FIELDS if getattr(args, name) is not None})
    config = CompareConfig(**values)
    if args.quick and args.output is None:
        config.output = f"model_cards/{config.stem}-{config.dataset}-quick"
    return config


def run(args: argparse.Namespace) -> int:
    """Run the comparison; print its summary table and where the report went."""
    result = run_compare(config_from_args(args))
    print(summary_table(result.summary["groups"], result.summary["target_loss"]))
    print(json.dumps({"output": str(result.output), "wall_seconds": round(result.summary["wall_seconds"], 1)}))
    return 0
