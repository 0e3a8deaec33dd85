"""``hf-varinit sweep``: the log sweep of the initial std of ReLU MLPs (`hf_varinit.studies.sweep`).

    hf-varinit sweep                       # the default study (~10 min on 2 CPU cores)
    hf-varinit sweep --quick               # seconds: a smoke test
"""

from __future__ import annotations

import argparse
import json
from dataclasses import asdict

from hf_varinit.studies.configs import SWEEP_QUICK, SweepConfig, default_stds
from hf_varinit.studies.sweep import run_sweep

# flags that set the SweepConfig field of the same name when given
_FIELDS = ("datasets", "depths", "stds", "seeds", "width", "steps", "lr", "batch_size", "max_train", "stable_fraction",
           "signal_bound", "output")


def add_arguments(parser: argparse.ArgumentParser) -> None:
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


def config_from_args(args: argparse.Namespace) -> SweepConfig:
    """The `SweepConfig` of parsed flags: defaults (or the ``--quick`` preset), then the flags given."""
    base = asdict(SweepConfig())
    if args.quick:
        base.update(SWEEP_QUICK)
    if args.stds is None and not args.quick:
        base["stds"] = default_stds(args.num_stds, args.std_min, args.std_max)
    base.update({name: getattr(args, name) for name in _FIELDS if getattr(args, name) is not None})
    if args.epochs is not None:
        base["epochs"] = args.epochs
        if args.steps is None:
            base["steps"] = None
    return SweepConfig(**base)


def run(args: argparse.Namespace) -> int:
    """Run the sweep; print the band of every (dataset, depth) and where the report went."""
    result = run_sweep(config_from_args(args))
    for b in result.bands:
        band = f"{b['band_lo']:.3g} .. {b['band_hi']:.3g}" if b["band_lo"] else "none"
        print(f"{b['dataset']:>14} depth {b['depth']:>2}: stable band {band}")
    print(json.dumps({"output": str(result.output), "wall_seconds": round(result.summary["wall_seconds"], 1)}))
    return 0
