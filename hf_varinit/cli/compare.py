"""``hf-varinit compare``: init rules head to head, on ReLU MLPs (`hf_varinit.studies.compare`) or on a language
model (`hf_varinit.studies.lm_compare`).

    hf-varinit compare --study init --dataset mnist-subset
    hf-varinit compare --study optimal --dataset mnist-subset
    hf-varinit compare --study optimal --quick     # seconds: a smoke test
    hf-varinit compare --study lm --config gpt2-12l-lm-study --arms gpt2 kaiming "optimal:report=R" \\
        --arm-names gpt2 kaiming optimal-pilot --seeds 5 --steps 600 --target-loss 5.5

The MLP studies' flags are the fields of `hf_varinit.studies.configs.CompareConfig` (their help and defaults).
``--study lm`` takes ``--config``, ``--arms``, ``--arm-names``, ``--horizons`` and ``--no-progress`` (its own), and
of the shared flags ``--seeds`` (one integer N: seeds 0..N-1; several: the seeds themselves), ``--steps`` (default:
the config's max_steps), ``--target-loss`` (an eval loss; required), ``--output`` (default: runs/lm-<config stem>)
and ``--overwrite``.
"""

from __future__ import annotations

import argparse
import dataclasses
import json

from hf_varinit.errors import ConfigError
from hf_varinit.studies.configs import COMPARE_QUICK, RUNS, CompareConfig, add_config_arguments, config_values

LM_SHARED = ("study", "seeds", "steps", "target_loss", "output", "overwrite")  # CompareConfig flags lm also reads


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Add the ``hf-varinit compare`` options to ``parser``: one flag per `CompareConfig` field, ``--quick``, and the
    flags of ``--study lm``."""
    add_config_arguments(parser, CompareConfig)
    for action in parser._actions:
        if action.dest == "seeds":
            action.help += "; --study lm: one integer N means seeds 0..N-1, several are the seeds themselves"
    parser.add_argument("--quick", action="store_true",
                        help="a seconds-long smoke test: wine, 2 seeds, a 2x16 MLP, report in "
                             f"{RUNS}/<study>-wine-quick; flags given still apply (default: off; not --study lm)")
    lm = parser.add_argument_group("--study lm only (each (arm, seed) is one `hf-varinit pretrain` run)")
    lm.add_argument("--config", default=None, metavar="FILE_OR_NAME",
                    help="--study lm only: pretraining YAML or bundled config, as `pretrain --config` takes it, e.g. "
                         "gpt2-12l-lm-study; --steps overrides its max_steps (default: none; required with --study lm)")
    lm.add_argument("--arms", nargs="+", default=None, metavar="SPEC",
                    help="--study lm only: init rule specs, as `pretrain --init` takes them; the first is the "
                         "baseline of the Welch tests, e.g. gpt2 kaiming optimal:report=R (default: none; required)")
    lm.add_argument("--arm-names", nargs="+", default=None, metavar="LABEL",
                    help="--study lm only: one label per arm for tables and run folders (default: the specs)")
    lm.add_argument("--horizons", nargs="+", type=int, default=None, metavar="STEP",
                    help="--study lm only: eval steps of the table (default: every eval step all runs have, and "
                         "the last)")
    lm.add_argument("--no-progress", action="store_true",
                    help="--study lm only: no progress bar over the runs (TQDM_DISABLE=1 does the same) (default: off)")


def config_from_args(args: argparse.Namespace) -> CompareConfig:
    """The `CompareConfig` of parsed flags: the ``--quick`` preset if asked, then the flags given."""
    values = {**(COMPARE_QUICK if args.quick else {}), **config_values(args, CompareConfig)}
    config = CompareConfig(**values)
    if args.quick and args.output is None:
        config.output = f"{RUNS}/{config.stem}-{config.dataset}-quick"
    return config


def lm_study_from_args(args: argparse.Namespace):
    """The `LMStudy` of parsed flags (``--study lm``); MLP-only flags are refused."""
    from hf_varinit.studies.lm_compare import LMStudy, study_seeds

    mlp_only = sorted(f"--{f.name.replace('_', '-')}" for f in dataclasses.fields(CompareConfig)
                      if f.name not in LM_SHARED and getattr(args, f.name, None) is not None)
    if args.quick:
        mlp_only.append("--quick")
    if mlp_only:
        raise ConfigError(f"{', '.join(mlp_only)}: MLP-study flags; --study lm takes --config, --arms, --arm-names, "
                          "--seeds, --steps, --target-loss, --horizons, --output, --overwrite, --no-progress")
    if not args.config:
        raise ConfigError("--study lm needs --config: a pretraining YAML or bundled config, e.g. gpt2-12l-lm-study")
    if args.target_loss is None:
        raise ConfigError("--study lm needs --target-loss: the eval loss whose first crossing is counted, e.g. 5.5")
    steps = args.steps
    if steps is None:
        from hf_varinit.train.options import parse_options

        steps = parse_options(["--config", args.config]).training.max_steps
    seeds = study_seeds(args.seeds or [5])
    return LMStudy(config=args.config, arms=args.arms or [], seeds=seeds, steps=steps, target_loss=args.target_loss,
                   arm_names=args.arm_names, horizons=args.horizons, output=args.output,
                   overwrite=bool(args.overwrite), progress=not args.no_progress)


def run(args: argparse.Namespace) -> int:
    """Run the comparison; print its summary table and where the report went."""
    if args.study == "lm":
        from hf_varinit.studies.lm_compare import run_lm_study

        result = run_lm_study(lm_study_from_args(args))
        if result.table is not None:
            print(result.table)
        print(json.dumps({"output": str(result.output), "runs": result.outcomes}))
        return result.exit_code

    from hf_varinit.studies.cards import summary_table
    from hf_varinit.studies.compare import run_compare

    result = run_compare(config_from_args(args))
    print(summary_table(result.summary["groups"], result.summary["target_loss"]))
    print(json.dumps({"output": None if result.output is None else str(result.output),
                      "wall_seconds": round(result.summary["wall_seconds"], 1)}))
    return 0
