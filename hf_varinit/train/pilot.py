"""The language-model pilot of ``hf-varinit calibrate --config <yaml>``: each round is a short pretraining run.

The pilot is the product's own Accelerate loop (`hf_varinit.train.loop`) with the YAML's model, data and
optimizer; only the init rule changes between rounds. ``--steps``, ``--lr``, ``--seed``, ``--batch-size``
and ``--record-every`` override the YAML. Pilot runs go to a temporary folder removed afterwards.
"""

from __future__ import annotations

import dataclasses
import itertools
import shutil
import tempfile
import weakref
from pathlib import Path
from typing import Any

from hf_varinit.record.stats_file import load_stats
from hf_varinit.train.loop import run_pretrain
from hf_varinit.train.run_config import build_options

# calibrate setting -> pretrain option (given only when set)
_OVERRIDES = {"steps": "max_steps", "lr": "lr", "seed": "seed", "batch_size": "batch_size",
              "record_every": "record_every"}


def lm_pilot_factory(args: Any):
    """``(build_model, pilot, metadata)`` for `hf_varinit.calibrate.calibrate` from ``args.config``.

    ``args`` holds ``config`` (a pretraining YAML) and optionally the settings of ``_OVERRIDES`` as attributes (the
    parsed ``hf-varinit calibrate`` flags). ``build_model(rule)`` returns the rule itself: the training loop builds
    (and seeds) the model from it.
    """
    overrides = {option: getattr(args, name) for name, option in _OVERRIDES.items()
                 if getattr(args, name, None) is not None}
    workdir = Path(tempfile.mkdtemp(prefix="hf_varinit_calibrate_"))
    rounds = itertools.count()
    base = build_options(args.config, **overrides, output_dir=str(workdir / "check"))  # checks the YAML up front

    def build_model(rule):
        return rule

    def pilot(rule):
        out = workdir / f"round_{next(rounds)}"
        options = build_options(args.config, **overrides, output_dir=str(out), checkpoint_every=None)
        options.training.init = rule
        # Ctrl-C stops the whole calibration (a KeyboardInterrupt), not just this round
        return load_stats(run_pretrain(options, handle_signals=False).stats_path)

    weakref.finalize(pilot, shutil.rmtree, workdir, True)
    t = base.training
    metadata = {"config": args.config, **{k: v for k, v in dataclasses.asdict(base.model).items()},
                "optimizer": t.optimizer, "lr": t.lr, "steps": t.max_steps, "batch_size": t.batch_size,
                "record_every": t.record_every, "seed": t.seed}
    return build_model, pilot, metadata
