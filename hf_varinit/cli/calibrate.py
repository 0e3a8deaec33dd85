"""``hf-varinit calibrate``: iterate init -> pilot training -> V(W) to the fixed point s0^2 = V(W).

    hf-varinit calibrate --config gpt2-12l-tiny --rounds 3 --steps 150  # a GPT-2 pilot, report in runs/gpt2-calibrated
    hf-varinit calibrate --model mlp --rounds 4 --tol 0.05            # the lab's MLP pilot (pip install -e experiments)
    hf-varinit calibrate --weight-decay 0.1 --start-scales 0.5 1 2      # does the fixed point depend on the start?

The flags are the fields of `CalibrateConfig` (the loop), `PilotOverrides` (what a language-model pilot takes over
its YAML) and of each installed pilot plugin's ``settings_class`` (the lab's MLP pilot). The loop and the pilot
lookup are `hf_varinit.calibrate`.

A pilot factory (`hf_varinit.calibrate.register_pilot_factory`, or an ``hf_varinit.pilots`` entry point) may carry,
for this command: ``settings_class`` (a dataclass with help metadata: its fields become flags, in a group titled
``group``, and its defaults fill in what is not typed), ``quick`` (the ``--quick`` preset), ``title(args)`` (the
card's title), ``output(args)`` (the default report folder) and ``command(args)`` (the command line of the card).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from hf_varinit.cli.flags import add_dataclass_flags, flag_name, flag_values
from hf_varinit.plugins import PILOTS, entry_names, load_entry

RUNS = "runs"  # where reports go by default (model_cards/ holds the committed evidence)


def _opt(help_text: str, default: Any = None, *, shown: str | None = None) -> Any:
    return field(default=default, metadata={"help": help_text, **({"shown": shown} if shown is not None else {})})


@dataclass
class CalibrateConfig:
    """Settings of the calibration loop (the pilot's own are its plugin's ``settings_class`` or the ``--config``
    YAML)."""

    model: str | None = _opt("pilot: 'gpt2', 'llama', 'mlp' (the lab) or one registered with register_pilot_factory",
                             shown="mlp; gpt2 with --config")
    config: str | None = _opt("pretraining YAML (path or bundled name) of a language-model pilot, e.g. "
                              "gpt2-12l-tiny", shown="none")
    rounds: int = _opt("most pilot runs", 4)
    tol: float = _opt("stop when the max relative change of V(W) is below this", 0.05)
    initial_rule: str = _opt("init rule of round 0", "kaiming")
    start_scales: list[float] | None = _opt("round 0 at --initial-rule with every variance times each scale, e.g. "
                                            "0.5 1 2: one calibration per start, a table of the calibrated V(W) "
                                            "per start (does the fixed point depend on the start?)", shown="1")
    drift_tol: float | None = _opt("steady-state drift tolerance", shown="0.05, as hf-varinit report")
    window_fraction: float | None = _opt("steady-state trailing window", shown="0.25, as hf-varinit report")
    output: str | None = _opt("report folder", shown=f"{RUNS}/mlp-calibrated-<dataset>, or {RUNS}/<model>-calibrated")
    overwrite: bool = _opt("replace an existing report folder", False)


@dataclass
class PilotOverrides:
    """Pilot settings a language-model pilot (``--config``) takes over its YAML; a plugin pilot's group has them."""

    steps: int | None = _opt("pilot steps", shown="the YAML's max_steps")
    lr: float | None = _opt("pilot learning rate", shown="the YAML's")
    batch_size: int | None = _opt("pilot batch size", shown="the YAML's")
    record_every: int | None = _opt("pilot record interval (steps)", shown="the YAML's")
    seed: int | None = _opt("init seed and data order (the same every round)", shown="the YAML's")


LM_OVERRIDES = tuple(f.name for f in dataclasses.fields(PilotOverrides))
QUICK = dict(steps=150, record_every=5, rounds=4, tol=0.05)  # and the pilot's own `quick`

DESCRIPTION = f"""\
Iterate init -> pilot training -> V(W) until the fixed point s0^2 = V(W).

Which defaults apply:
  the loop options (--rounds, --tol, --initial-rule, --drift-tol, --window-fraction, --output) apply to every pilot;
  a pilot plugin's options apply to its --model (the lab's MLP pilot: --model mlp, the default) with the defaults
  shown; with --config YAML (a GPT-2 / Llama pilot) the model, data and training come from the YAML, and only
  {', '.join(flag_name(n) for n in LM_OVERRIDES)} override it (the MLP defaults shown do not apply).
"""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Add the ``hf-varinit calibrate`` options to ``parser``: `CalibrateConfig`'s, each installed pilot plugin's,
    then those of `PilotOverrides` no plugin has."""
    parser.description = DESCRIPTION
    add_dataclass_flags(parser, CalibrateConfig, group="calibration loop (every pilot)")
    overrides = ", ".join(flag_name(n) for n in LM_OVERRIDES)
    for name in entry_names(PILOTS):
        settings = getattr(load_entry(PILOTS, name), "settings_class", None)
        if settings is not None:
            taken = {a.dest for a in parser._actions}
            add_dataclass_flags(parser, settings, skip=sorted(taken), group=f"{name} pilot (--model {name}; with "
                                f"--config only {overrides} apply, over the YAML)")
    taken = {a.dest for a in parser._actions}
    add_dataclass_flags(parser, PilotOverrides, skip=sorted(taken), group="language-model pilot (--config): over "
                        "the YAML")
    parser.add_argument("--quick", action="store_true",
                        help="a seconds-long smoke test: 150 pilot steps (the MLP pilot: wine, a 2x16 MLP) "
                             "(default: off)")


def _pilot(args: argparse.Namespace):
    from hf_varinit.calibrate import pilot_factory

    return pilot_factory(args.model)


def _resolve(args: argparse.Namespace) -> argparse.Namespace:
    """Fill the options not given: the pilot's defaults (a plugin's, none for a YAML), ``--quick``, the output."""
    if args.model is None:
        args.model = "gpt2" if args.config else "mlp"
    pilot = _pilot(args)
    loop = CalibrateConfig()
    defaults = {"rounds": loop.rounds, "tol": loop.tol, "initial_rule": loop.initial_rule}
    settings = getattr(pilot, "settings_class", None)
    if settings is not None:  # language-model pilots take their settings from the YAML
        defaults.update(dataclasses.asdict(settings()))
    if args.quick:
        defaults.update({**QUICK, **getattr(pilot, "quick", {})})
    for k, v in defaults.items():
        if getattr(args, k, None) is None:
            setattr(args, k, v)
    if args.output is None:
        args.output = pilot.output(args) if hasattr(pilot, "output") else f"{RUNS}/{args.model}-calibrated"
    args.overwrite = bool(args.overwrite)
    return args


def _command(args: argparse.Namespace) -> str:
    """The command line that regenerates the report (written into its card)."""
    pilot = _pilot(args)
    if hasattr(pilot, "command"):
        return pilot.command(args)
    extra = [f"{flag_name(n)} {getattr(args, n)}" for n in LM_OVERRIDES if getattr(args, n, None) is not None]
    return " ".join([f"hf-varinit calibrate --model {args.model} --config {args.config}", *extra,
                     f"--rounds {args.rounds} --tol {args.tol} --output {args.output}"])


def run(args: argparse.Namespace) -> int:
    """Calibrate with the pilot ``--model``; print the outcome as one JSON line."""
    from hf_varinit.calibrate import calibrate_pilot
    from hf_varinit.report.options import AnalysisOptions

    args = _resolve(args)
    options = AnalysisOptions(**{k: v for k, v in flag_values(args, CalibrateConfig).items()
                                 if k in ("drift_tol", "window_fraction") and v is not None})
    pilot = _pilot(args)
    title = pilot.title(args) if hasattr(pilot, "title") else None
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
    from hf_varinit.calibrate import calibrate_pilot, start_table
    from hf_varinit.io_utils import atomic_write_json, check_overwrite, json_safe, write_folder
    from hf_varinit.train.study_report import study_card

    check_overwrite(args.output, args.overwrite)
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
    writers = {f"start-x{s:g}": (lambda p, r=r, s=s: r.save(p, title=title, command=command,
                                                          reference=f"{args.output}/start-x{s:g}"))
               for s, r in results.items()}
    write_folder(args.output, {**writers, "starts.json": lambda p: atomic_write_json(p, json_safe(
        {"command": command, "starts": summary})), "README.md": lambda p: p.write_text(
        study_card(tags=["initialization", "calibration"], datasets=[], body=body))}, overwrite=args.overwrite)
    print(json.dumps({"output": args.output, **{f"x{s:g}": {"converged": r.converged, "rounds": len(r.history)}
                                                for s, r in results.items()}}))
    return 0
