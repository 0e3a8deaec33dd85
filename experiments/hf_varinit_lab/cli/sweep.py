"""log sweep of the init std for ReLU MLPs: the stability band (the lab's `hf_varinit_lab.sweep`)

    hf-varinit sweep                       # the default study (~10 min on 2 CPU cores), report in runs/
    hf-varinit sweep --quick               # seconds: a smoke test

The lab's ``hf_varinit.commands`` entry point: ``hf-varinit`` lists it from the metadata and imports this module
when it runs (`add_arguments`, `run`). The flags are the fields of `hf_varinit_lab.study_settings.SweepConfig`
(their help and defaults).
"""

from __future__ import annotations

import argparse
import json

from hf_varinit.cli.flags import add_dataclass_flags, flag_values
from hf_varinit_lab.study_settings import SWEEP_QUICK, SweepConfig

THREADED = True  # `hf-varinit` adds --threads: the small MLPs run fastest on 1 thread on a busy machine


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Add the ``hf-varinit sweep`` options to ``parser``: one flag per `SweepConfig` field, and ``--quick``."""
    add_dataclass_flags(parser, SweepConfig)
    parser.add_argument("--quick", action="store_true",
                        help="a seconds-long smoke test: wine, depth 3, 3 stds, report in runs/sweep-quick "
                             "; flags given still apply (default: off)")


def config_from_args(args: argparse.Namespace) -> SweepConfig:
    """The `SweepConfig` of parsed flags: defaults (or the ``--quick`` preset), then the flags given."""
    values = dict(SWEEP_QUICK) if args.quick else {}
    given = flag_values(args, SweepConfig)
    if given.get("epochs") is not None and "steps" not in given:
        values["steps"] = None  # --epochs alone replaces the default number of steps
    if {"std_min", "std_max", "num_stds"} & set(given):
        values.pop("stds", None)  # a grid asked for wins over the preset's
    values.update(given)
    return SweepConfig(**values)


def run(args: argparse.Namespace) -> int:
    """Run the sweep; print the band of every (dataset, depth) and where the report went."""
    from hf_varinit_lab.sweep import run_sweep

    result = run_sweep(config_from_args(args))
    for b in result.bands:
        band = f"{b['band_lo']:.3g} .. {b['band_hi']:.3g}" if b["band_lo"] else "none"
        print(f"{b['dataset']:>14} depth {b['depth']:>2} width {b['width']:>4}: stable band {band} (failure below: "
              f"{b['lo_cause']}, above: {b['hi_cause']})")
    print(json.dumps({"output": None if result.output is None else str(result.output),
                      "wall_seconds": round(result.summary["wall_seconds"], 1)}))
    return 0
