"""``hf-varinit compare``: init rules head to head on ReLU MLPs (`hf_varinit.studies.compare`).

    hf-varinit compare --study init --dataset mnist-subset
    hf-varinit compare --study optimal --dataset mnist-subset
    hf-varinit compare --study optimal --quick     # seconds: a smoke test

The flags are the fields of `hf_varinit.studies.configs.CompareConfig` (their help and defaults).
"""

from __future__ import annotations

import argparse
import json

from hf_varinit.studies.configs import COMPARE_QUICK, RUNS, CompareConfig, add_config_arguments, config_values


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Add the ``hf-varinit compare`` options to ``parser``: one flag per `CompareConfig` field, and ``--quick``."""
    add_config_arguments(parser, CompareConfig)
    parser.add_argument("--quick", action="store_true",
                        help="a seconds-long smoke test: wine, 2 seeds, a 2x16 MLP, report in "
                             f"{RUNS}/<study>-wine-quick; flags given still apply (default: off)")


def config_from_args(args: argparse.Namespace) -> CompareConfig:
    """The `CompareConfig` of parsed flags: the ``--quick`` preset if asked, then the flags given."""
    values = {**(COMPARE_QUICK if args.quick else {}), **config_values(args, CompareConfig)}
    config = CompareConfig(**values)
    if args.quick and args.output is None:
        config.output = f"{RUNS}/{config.stem}-{config.dataset}-quick"
    return config


def run(args: argparse.Namespace) -> int:
    """Run the comparison; print its summary table and where the report went."""
    from hf_varinit.studies.cards import summary_table
    from hf_varinit.studies.compare import run_compare

    result = run_compare(config_from_args(args))
    print(summary_table(result.summary["groups"], result.summary["target_loss"]))
    print(json.dumps({"output": None if result.output is None else str(result.output),
                      "wall_seconds": round(result.summary["wall_seconds"], 1)}))
    return 0
