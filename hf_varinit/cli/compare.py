"""``hf-varinit compare``: init rules head to head over seeds; the LM study here, others from plugins.

    hf-varinit compare --study lm --config gpt2-12l-lm-study --arms gpt2 kaiming "optimal:report=R" \\
        --arm-names gpt2 kaiming optimal-pilot --seeds 5 --steps 600 --target-loss 5.5
    hf-varinit compare --study init --dataset mnist-subset       # the lab (pip install -e experiments/)
    hf-varinit compare --study optimal --quick                   # the lab: seconds, a smoke test

``--study lm`` is the library's (`hf_varinit.train.lm_study`): ``--config``, ``--arms``, ``--arm-names``,
``--horizons`` and ``--no-progress`` are its own, and ``--seeds`` (one integer N: seeds 0..N-1; several: the seeds
themselves), ``--steps`` (default: the config's max_steps), ``--target-loss`` (an eval loss; required),
``--output`` (default: runs/lm-<config stem>) and ``--overwrite`` are shared with the other studies.

Any other study is an ``hf_varinit.studies`` entry point (`hf_varinit.plugins`): the lab's MLP studies ``init``
and ``optimal``. The entry is an object (a module will do) with ``add_arguments(parser, shared)``, which adds the
study's own flags (every flag named in ``shared`` exists already), and ``run(args) -> int``. Plugin flags are added
once per object, so two studies of one plugin share them; ``--study lm`` refuses them.
"""

from __future__ import annotations

import argparse
import json
from dataclasses import dataclass, field

from hf_varinit.cli.flags import add_dataclass_flags, flag_name
from hf_varinit.errors import ConfigError
from hf_varinit.plugins import STUDIES, entry_names, lab_missing, load_entry

LM = "lm"


@dataclass
class SharedFlags:
    """The flags of every study besides ``--study`` (a plugin's study reads them too); None: the study's default."""

    seeds: list[int] | None = field(default=None, metadata={
        "help": "seeds of every arm; --study lm: one integer N means seeds 0..N-1, several are the seeds themselves",
        "shown": "lm: 5; the lab's studies: 0 1 2 3 4"})
    steps: int | None = field(default=None, metadata={
        "help": "training steps of every run", "shown": "lm: the config's max_steps; the lab's: per study"})
    target_loss: float | None = field(default=None, metadata={
        "help": "the loss of the steps-to-target column (--study lm: the eval loss to reach; required there)",
        "shown": "none"})
    output: str | None = field(default=None, metadata={
        "help": "the study folder", "shown": "runs/lm-<config stem>; the lab's: runs/<study>-<dataset>"})
    overwrite: bool = field(default=False, metadata={"help": "replace an existing study folder, runs included"})


SHARED = ("study", *SharedFlags.__dataclass_fields__)
STUDY_DEFAULT = "init"  # as before the lab moved out: `compare` alone is the Kaiming vs Xavier study


def study_plugin(name: str):
    """The ``hf_varinit.studies`` entry ``name`` (its module imported now).

    Raises:
        ConfigError: no study of that name is installed (the message says where the lab's live).
    """
    plugin = load_entry(STUDIES, name)
    if plugin is None:
        raise ConfigError(lab_missing(STUDIES, name, f"--study {name}") or
                          f"--study {name!r} is unknown; valid: {', '.join([LM, *entry_names(STUDIES)])}")
    return plugin


class _Study(argparse.Action):
    """``--study``: a study that is not installed is refused while parsing, before its flags are missed."""

    def __call__(self, parser, namespace, values, option_string=None):
        if values != LM:
            study_plugin(values)
        setattr(namespace, self.dest, values)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Add the ``hf-varinit compare`` options to ``parser``: the shared flags, ``--study lm``'s, every installed
    study plugin's."""
    parser.add_argument("--study", action=_Study, default=STUDY_DEFAULT, metavar="STUDY",
                        help=f"{LM}: init rules on a language model, each (arm, seed) one `hf-varinit pretrain` run; "
                             "with the lab: init (Kaiming vs Xavier on MLPs), optimal (He-normal vs s0²=V(W) on MLPs) "
                             f"(default: {STUDY_DEFAULT})")
    add_dataclass_flags(parser, SharedFlags)
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
    lm.add_argument("--report-only", action="store_true",
                    help="--study lm only: train nothing; write the report of the seeds every arm has finished (a "
                         "partial card of a study still running) (default: off)")
    lm.add_argument("--runs-from", default=None, metavar="CARD",
                    help="--study lm only: a card of this study (study.json, runs.csv, curves.csv) whose finished "
                         "runs are taken instead of trained again, so a study spans machines, e.g. "
                         "model_cards/lm-study-gpt2-12l-3000 (default: none)")
    lm.add_argument("--no-progress", action="store_true",
                    help="--study lm only: no progress bar over the runs (TQDM_DISABLE=1 does the same) (default: off)")
    before = {a.dest for a in parser._actions}
    added = []
    for name in entry_names(STUDIES):
        plugin = study_plugin(name)
        if id(plugin) not in added:
            added.append(id(plugin))
            plugin.add_arguments(parser, SHARED)
    parser.set_defaults(_plugin_flags=sorted({a.dest for a in parser._actions} - before))


def lm_study_from_args(args: argparse.Namespace):
    """The `LMStudy` of parsed flags (``--study lm``); a plugin study's flags are refused."""
    from hf_varinit.train.lm_study import LMStudy, study_seeds

    foreign = sorted(flag_name(dest) for dest in getattr(args, "_plugin_flags", ())
                     if getattr(args, dest, None) not in (None, False))
    if foreign:
        raise ConfigError(f"{', '.join(foreign)}: flags of the lab's MLP studies; --study lm takes --config, --arms, "
                          "--arm-names, --seeds, --steps, --target-loss, --horizons, --output, --overwrite, "
                          "--no-progress, --report-only, --runs-from")
    if not args.config:
        raise ConfigError("--study lm needs --config: a pretraining YAML or bundled config, e.g. gpt2-12l-lm-study")
    if args.target_loss is None:
        raise ConfigError("--study lm needs --target-loss: the eval loss whose first crossing is counted, e.g. 5.5")
    steps = args.steps
    if steps is None:
        from hf_varinit.train.run_config import build_options

        steps = build_options(args.config).training.max_steps
    seeds = study_seeds(args.seeds or [5])
    return LMStudy(config=args.config, arms=args.arms or [], seeds=seeds, steps=steps, target_loss=args.target_loss,
                   arm_names=args.arm_names, horizons=args.horizons, output=args.output,
                   overwrite=bool(args.overwrite), progress=not args.no_progress,
                   report_only=bool(args.report_only), runs_from=args.runs_from)


def run(args: argparse.Namespace) -> int:
    """Run the study; print its summary table and where the report went."""
    if args.study != LM:
        return study_plugin(args.study).run(args)
    from hf_varinit.train.lm_study import run_lm_study

    result = run_lm_study(lm_study_from_args(args))
    if result.table is not None:
        print(result.table)
    print(json.dumps({"output": str(result.output), "runs": result.outcomes}))
    return result.exit_code
