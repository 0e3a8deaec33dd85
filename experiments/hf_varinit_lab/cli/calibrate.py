"""``hf-varinit calibrate --model mlp``: the lab's MLP pilot (`hf_varinit_lab.calibrate_mlp`).

    hf-varinit calibrate --model mlp --rounds 4 --tol 0.05            # report in runs/mlp-calibrated-mnist-subset
    hf-varinit calibrate --quick                                      # seconds: wine, a 2x16 MLP, 150 steps

`MLP_PILOT` is the lab's ``hf_varinit.pilots`` entry point: a pilot factory (`hf_varinit.calibrate.PilotFactory`)
that also carries what ``hf-varinit calibrate`` asks of a pilot (`hf_varinit.cli.calibrate`): its flags
(`hf_varinit_lab.study_settings.MLPPilotConfig`), the ``--quick`` preset, the card's title, the default folder and
the command line of the card. Importing this module loads no torch: the pilot's training is imported when it runs.
"""

from __future__ import annotations

import argparse
from typing import Any

from hf_varinit_lab.study_settings import RUNS, MLPPilotConfig


class MLPPilotFactory:
    """The ``mlp`` pilot: ``factory(settings) -> (build_model, pilot, metadata)`` and its command-line parts."""

    settings_class = MLPPilotConfig
    quick = dict(dataset="wine", depth=2, width=16)  # with the library's: 150 steps, record every 5, 4 rounds

    def __call__(self, settings: Any):
        from hf_varinit_lab.calibrate_mlp import mlp_pilot_factory

        return mlp_pilot_factory(settings)

    def title(self, args: Any) -> str:
        """The card title of an MLP calibration."""
        from hf_varinit_lab.calibrate_mlp import mlp_title

        return mlp_title(args)

    def output(self, args: argparse.Namespace) -> str:
        """The default report folder: ``runs/mlp-calibrated-<dataset>`` (``-quick`` with ``--quick``)."""
        return f"{RUNS}/mlp-calibrated-{args.dataset}{'-quick' if args.quick else ''}"

    def command(self, args: argparse.Namespace) -> str:
        """The command line that regenerates the report (written into its card)."""
        parts = ["hf-varinit calibrate --model mlp", f"--dataset {args.dataset}", f"--depth {args.depth}",
                 f"--width {args.width}", f"--activation {args.activation}", f"--lr {args.lr}",
                 f"--steps {args.steps}", f"--batch-size {args.batch_size}", f"--record-every {args.record_every}",
                 f"--seed {args.seed}", f"--rounds {args.rounds}", f"--tol {args.tol}",
                 f"--initial-rule {args.initial_rule}"]
        if args.max_train:
            parts.append(f"--max-train {args.max_train}")
        if args.weight_decay:
            parts.append(f"--weight-decay {args.weight_decay}")
        if args.start_scales:
            parts.append("--start-scales " + " ".join(f"{x:g}" for x in args.start_scales))
        for flag in ("drift_tol", "window_fraction"):
            if getattr(args, flag) is not None:
                parts.append(f"--{flag.replace('_', '-')} {getattr(args, flag)}")
        return " ".join([*parts, f"--output {args.output}"])


MLP_PILOT = MLPPilotFactory()
