"""``hf-varinit compare --study init|optimal``: the lab's MLP studies (`hf_varinit_lab.compare`).

    hf-varinit compare --study init --dataset mnist-subset
    hf-varinit compare --study optimal --dataset mnist-subset
    hf-varinit compare --study optimal --quick     # seconds: a smoke test

The lab's ``hf_varinit.studies`` entry point for both studies (`hf_varinit.cli.compare` finds it): this module's
`add_arguments` adds the flags of `hf_varinit_lab.study_settings.CompareConfig` that the library's ``compare`` does
not have already (``--study``, ``--seeds``, ``--steps``, ``--target-loss``, ``--output`` and ``--overwrite`` are
shared with ``--study lm``), and ``--quick``; `run` runs the study.
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Sequence

from hf_varinit.cli.flags import add_dataclass_flags, flag_values
from hf_varinit_lab.study_settings import COMPARE_QUICK, RUNS, CompareConfig


def add_arguments(parser: argparse.ArgumentParser, shared: Sequence[str]) -> None:
    """Add the MLP studies' options to ``parser``: one flag per `CompareConfig` field not in ``shared``, and
    ``--quick``."""
    group = add_dataclass_flags(parser, CompareConfig, skip=tuple(shared),
                                group="--study init / optimal only (the lab's MLP studies)")
    group.add_argument("--quick", action="store_true",
                       help="a seconds-long smoke test: wine, 2 seeds, a 2x16 MLP, report in "
                            f"{RUNS}/<study>-wine-quick; flags given still apply (default: off; not --study lm)")


def config_from_args(args: argparse.Namespace) -> CompareConfig:
    """The `CompareConfig` of parsed flags: the ``--quick`` preset if asked, then the flags given."""
    values = {**(COMPARE_QUICK if args.quick else {}), **flag_values(args, CompareConfig), "study": args.study}
    config = CompareConfig(**values)
    if args.quick and args.output is None:
        config.output = f"{RUNS}/{config.stem}-{config.dataset}-quick"
    return config


def run(args: argparse.Namespace) -> int:
    """Run the comparison; print its summary table and where the report went."""
    from hf_varinit_lab.cards import arm_table
    from hf_varinit_lab.compare import run_compare

    result = run_compare(config_from_args(args))
    print(arm_table(result.summary["groups"], result.summary["target_loss"]))
    print(json.dumps({"output": None if result.output is None else str(result.output),
                      "wall_seconds": round(result.summary["wall_seconds"], 1)}))
    return 0
