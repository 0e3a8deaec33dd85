"""``hf-varinit calibrate``: iterate init -> pilot training -> V(W) to the fixed point s0^2 = V(W).

    hf-varinit calibrate --model mlp --rounds 4 --tol 0.05 --output model_cards/mlp-calibrated
    hf-varinit calibrate --config configs/gpt2-12l-tiny.yaml --rounds 3

The loop and the pilot registry are `hf_varinit.calibrate`; the MLP pilot is `hf_varinit.studies.calibrate_mlp`.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
from pathlib import Path

from hf_varinit.calibrate import calibrate_pilot
from hf_varinit.report.steady_state import AnalysisOptions
from hf_varinit.studies.calibrate_mlp import MLPPilot, mlp_title

QUICK = dict(dataset="wine", depth=2, width=16, steps=150, record_every=5, rounds=4, tol=0.05)
_LOOP_DEFAULTS = {"rounds": 4, "tol": 0.05}


def add_arguments(parser: argparse.ArgumentParser) -> None:
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


def _resolve(args: argparse.Namespace) -> argparse.Namespace:
    """Fill the options not given: the pilot's defaults (MLP ones only for the MLP), ``--quick``, the output."""
    if args.model is None:
        args.model = "gpt2" if args.config else "mlp"
    defaults = dict(_LOOP_DEFAULTS)
    if args.model == "mlp":  # language-model pilots take their settings from the YAML
        defaults.update(dataclasses.asdict(MLPPilot()))
    if args.quick:
        defaults.update(QUICK)
    for k, v in defaults.items():
        if getattr(args, k, None) is None:
            setattr(args, k, v)
    if args.output is None:
        args.output = (f"model_cards/mlp-calibrated-{args.dataset}{'-quick' if args.quick else ''}"
                       if args.model == "mlp" else f"model_cards/{args.model}-calibrated")
    return args


def _command(args: argparse.Namespace) -> str:
    """The command line that regenerates the report (written into its card)."""
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


def run(args: argparse.Namespace) -> int:
    """Calibrate with the pilot ``--model``; print the outcome as one JSON line."""
    args = _resolve(args)
    options = AnalysisOptions(**{k: getattr(args, k) for k in ("drift_tol", "window_fraction")
                                 if getattr(args, k) is not None})
    result = calibrate_pilot(args.model, args, rounds=args.rounds, tol=args.tol, initial_rule=args.initial_rule,
                             options=options, output=args.output,
                             title=mlp_title(args) if args.model == "mlp" else None, command=_command(args))
    print(json.dumps({"output": str(Path(args.output)), "converged": result.converged,
                      "rounds": len(result.history),
                      "max_rel_change": [round(h["max_rel_change"], 5) for h in result.history],
                      "wall_seconds": result.metadata["wall_seconds"]}))
    return 0
