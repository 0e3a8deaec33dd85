"""``hf-varinit calibrate``: iterate init -> pilot training -> V(W) to the fixed point s0^2 = V(W).

    hf-varinit calibrate --model mlp --rounds 4 --tol 0.05            # report in runs/mlp-calibrated-mnist-subset
    hf-varinit calibrate --config gpt2-12l-tiny --rounds 3 --steps 150  # a GPT-2 pilot, report in runs/gpt2-calibrated
    hf-varinit calibrate --weight-decay 0.1 --start-scales 0.5 1 2      # does the fixed point depend on the start?

The flags are the fields of `CalibrateConfig` (the loop) and `MLPPilotConfig` (the MLP pilot) in
`hf_varinit.studies.configs`. The loop and the pilot registry are `hf_varinit.calibrate`; the MLP pilot is
`hf_varinit.studies.calibrate_mlp`.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
from pathlib import Path

from hf_varinit.studies.configs import RUNS, CalibrateConfig, MLPPilotConfig, add_config_arguments, config_values

QUICK = dict(dataset="wine", depth=2, width=16, steps=150, record_every=5, rounds=4, tol=0.05)
# pilot flags that a language-model pilot (--config) also takes, overriding its YAML
LM_OVERRIDES = ("steps", "lr", "seed", "batch_size", "record_every")

DESCRIPTION = f"""\
Iterate init -> pilot training -> V(W) until the fixed point s0^2 = V(W).

Which defaults apply:
  the loop options (--rounds, --tol, --initial-rule, --drift-tol, --window-fraction, --output) apply to every pilot;
  the MLP pilot options apply to --model mlp (the default) with the defaults shown;
  with --config YAML (a GPT-2 / Llama pilot) the model, data and training come from the YAML, and only
  {', '.join('--' + n.replace('_', '-') for n in LM_OVERRIDES)} override it (the MLP defaults shown do not apply).
"""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Add the ``hf-varinit calibrate`` options to ``parser``: `CalibrateConfig`'s, then `MLPPilotConfig`'s."""
    parser.description = DESCRIPTION
    add_config_arguments(parser.add_argument_group("calibration loop (every pilot)"), CalibrateConfig)
    pilot = parser.add_argument_group(
        "MLP pilot (--model mlp; with --config only " + ", ".join("--" + n.replace("_", "-") for n in LM_OVERRIDES)
        + " apply, over the YAML)")
    add_config_arguments(pilot, MLPPilotConfig)
    parser.add_argument("--quick", action="store_true",
                        help="a seconds-long smoke test: wine, a 2x16 MLP, 150 steps (default: off)")


def _resolve(args: argparse.Namespace) -> argparse.Namespace:
    """Fill the options not given: the pilot's defaults (MLP ones only for the MLP), ``--quick``, the output."""
    if args.model is None:
        args.model = "gpt2" if args.config else "mlp"
    loop = CalibrateConfig()
    defaults = {"rounds": loop.rounds, "tol": loop.tol, "initial_rule": loop.initial_rule}
    if args.model == "mlp":  # language-model pilots take their settings from the YAML
        defaults.update(dataclasses.asdict(MLPPilotConfig()))
    if args.quick:
        defaults.update(QUICK)
    for k, v in defaults.items():
        if getattr(args, k, None) is None:
            setattr(args, k, v)
    if args.output is None:
        args.output = (f"{RUNS}/mlp-calibrated-{args.dataset}{'-quick' if args.quick else ''}"
                       if args.model == "mlp" else f"{RUNS}/{args.model}-calibrated")
    args.overwrite = bool(args.overwrite)
    return args


def _command(args: argparse.Namespace) -> str:
    """The command line that regenerates the report (written into its card)."""
    if args.model != "mlp":
        extra = [f"--{n.replace('_', '-')} {getattr(args, n)}" for n in LM_OVERRIDES if getattr(args, n) is not None]
        return " ".join([f"hf-varinit calibrate --model {args.model} --config {args.config}", *extra,
                         f"--rounds {args.rounds} --tol {args.tol} --output {args.output}"])
    parts = ["hf-varinit calibrate --model mlp", f"--dataset {args.dataset}", f"--depth {args.depth}",
             f"--width {args.width}", f"--activation {args.activation}", f"--lr {args.lr}", f"--steps {args.steps}",
             f"--batch-size {args.batch_size}", f"--record-every {args.record_every}", f"--seed {args.seed}",
             f"--rounds {args.rounds}", f"--tol {args.tol}", f"--initial-rule {args.initial_rule}"]
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


def run(args: argparse.Namespace) -> int:
    """Calibrate with the pilot ``--model``; print the outcome as one JSON line."""
    from hf_varinit.calibrate import calibrate_pilot
    from hf_varinit.report.steady_state import AnalysisOptions
    from hf_varinit.studies.calibrate_mlp import mlp_title  # importing it registers the MLP pilot

    args = _resolve(args)
    options = AnalysisOptions(**{k: v for k, v in config_values(args, CalibrateConfig).items()
                                 if k in ("drift_tol", "window_fraction")})
    title = mlp_title(args) if args.model == "mlp" else None
    scales = args.start_scales or [1.0]
    if len(scales) > 1:
        return _run_starts(args, scales, options, title)
    result = calibrate_pilot(args.model, args, rounds=args.rounds, tol=args.tol, initial_rule=args.initial_rule,
                             start_scale=scales[0], options=options, output=args.output, overwrite=args.overwrite,
                             title=title, command=_command(args))
    output = Path(args.output)
    print(json.dumps({"output": str(output), "converged": result.converged, "rounds": len(result.history),
                      "max_rel_change": [round(h["max_rel_change"], 5) for h in result.history],
                      "wall_seconds": result.metadata["wall_seconds"]}))
    return 0


def _run_starts(args: argparse.Namespace, scales: list[float], options, title: str | None) -> int:
    """One calibration per start scale; ``<output>/start-x<s>/`` each, and a card comparing the calibrated V(W)."""
    from hf_varinit.calibrate import calibrate_pilot, check_output, start_table
    from hf_varinit.io_utils import atomic_write_json, json_safe
    from hf_varinit.studies.render import model_card, write_folder

    check_output(args.output, args.overwrite)
    command = _command(args)
    results = {s: calibrate_pilot(args.model, args, rounds=args.rounds, tol=args.tol, initial_rule=args.initial_rule,
                                  start_scale=s, options=options) for s in scales}
    body = (f"\n# Does the calibrated V(W) depend on the starting init?\n\n{title or 'Calibration'}, started from "
            f"`{args.initial_rule}` with every tracked variance times {', '.join(f'{s:g}' for s in scales)}; "
            f"the rest of the settings identical (weight decay {getattr(args, 'weight_decay', 0) or 0:g}). One "
            f"sub-folder per start (`start-x<scale>/`) holds its calibration report.\n\n{start_table(results)}\n\n"
            f"## Regenerate\n\n```bash\n{command}\n```\n")
    summary = {s: {"variances": r.variances, "converged": r.converged, "rounds": len(r.history),
                   "max_rel_change": [h["max_rel_change"] for h in r.history]} for s, r in results.items()}
    writers = {f"start-x{s:g}": (lambda p, r=r: r.save(p, title=title, command=command)) for s, r in results.items()}
    write_folder(args.output, {**writers, "starts.json": lambda p: atomic_write_json(p, json_safe(
        {"command": command, "starts": summary})), "README.md": lambda p: p.write_text(
        model_card(tags=["initialization", "calibration"], datasets=[], body=body))}, overwrite=args.overwrite)
    print(json.dumps({"output": args.output, **{f"x{s:g}": {"converged": r.converged, "rounds": len(r.history)}
                                                for s, r in results.items()}}))
    return 0
