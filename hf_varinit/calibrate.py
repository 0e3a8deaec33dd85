"""Self-consistent calibration of the optimal init: iterate s0^2 <- V(W) until the fixed point s0^2 = V(W).

Round r builds a model initialised with the current s0^2 (round 0: ``initial_rule``), trains it in a pilot run
that records the weight statistics, and takes the steady-state second moment V(W) of every tracked tensor
with `report.analyze`. Its relative change is

    rel_r(key) = |V_r(key) - s0_r^2(key)| / s0_r^2(key)

where s0_r^2 is the variance the round was initialised with (for r >= 1 that is V_{r-1}; for round 0 the
initial rule's variance as the statistics record it). Calibration stops once ``max_key rel_r < tol``
(converged) or after ``rounds`` pilots (not converged). The result's ``variances`` are the last pilot's V(W).

Model-agnostic: ``build_model(rule) -> model`` and ``pilot(model) -> VarianceStats`` can be any pair. Pilots are
looked up by name (`pilot_factory`, `calibrate_pilot`): the GPT-2 / Llama pilot is `hf_varinit.train.pilot`; more
come from `register_pilot_factory` or, resolved on lookup, from the ``hf_varinit.pilots`` entry points
(`hf_varinit.plugins`): the lab's MLP pilot is ``mlp`` (``pip install -e experiments/``).

Example:
    >>> result = calibrate_pilot("gpt2", settings, rounds=3, output="runs/gpt2-cal")  # settings.config: a YAML
    >>> model = hf_varinit.from_config(cfg, rule=result.rule())  # or rule="optimal:report=runs/gpt2-cal"
"""

from __future__ import annotations

import dataclasses
import json
import math
import sys
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from hf_varinit.errors import ConfigError, NonFiniteLossError
from hf_varinit.init.patch import init_plan
from hf_varinit.init.roles import tracked_shapes
from hf_varinit.io_utils import atomic_write_json, atomic_write_text, check_overwrite, json_safe, write_folder
from hf_varinit.plugins import PILOTS, entry_names, lab_missing, load_entry
from hf_varinit.report.options import AnalysisOptions
from hf_varinit.report.report import VarianceReport
from hf_varinit.report.steady_state import analyze
from hf_varinit.report.tables import markdown_table
from hf_varinit.train.pilot import lm_pilot_factory

__all__ = ["PILOT_FACTORIES", "CalibrationResult", "PilotFactory", "calibrate", "calibrate_pilot",
           "pilot_factory", "register_pilot_factory", "scaled_rule", "start_table"]

# settings -> (build_model(rule) -> model, pilot(model) -> VarianceStats, metadata for the card)
PilotFactory = Callable[[Any], tuple[Callable[[Any], Any], Callable[[Any], Any], dict]]


@dataclass
class CalibrationResult:
    """The outcome of `calibrate`.

    Attributes:
        variances (`dict[str, float]`): V(W) per tracked key from the last pilot (the calibrated s0^2).
        history (`list[dict]`): per round: ``round``, ``rule``, ``max_rel_change``, ``worst_key``, ``values``
            (V(W) per key), ``init`` (s0^2 per key the round started from), ``rel_change`` and ``stationary``.
        converged (`bool`): the last round's max relative change is below ``tol``.
        final_stats (`VarianceStats`): the last pilot's record.
        tol (`float`), options (`AnalysisOptions`), metadata (`dict`): settings, for the card.
    """

    variances: dict[str, float]
    history: list[dict]
    converged: bool
    final_stats: Any
    tol: float
    options: AnalysisOptions = field(default_factory=AnalysisOptions)
    metadata: dict = field(default_factory=dict)

    def rule(self, fallback: str = "kaiming") -> dict:
        """The init rule spec ``{"name": "optimal", "variances": ...}`` of the calibrated variances."""
        return {"name": "optimal", "variances": dict(self.variances), "fallback": fallback}

    def convergence_rows(self) -> list[dict]:
        return [{"round": h["round"], "rule": h["rule"], "max_rel_change": h["max_rel_change"],
                 "worst_key": h["worst_key"], "all_stationary": all(h["stationary"].values())}
                for h in self.history]

    def save(self, folder: str | Path, *, title: str | None = None, command: str | None = None,
             overwrite: bool = False, reference: str | None = None) -> Path:
        """Write the last pilot's `VarianceReport` to ``folder`` plus ``convergence.csv`` / ``convergence.md``,
        ``calibration.json``, and a calibration section in the card.

        The folder is written whole into a staging folder next to it and then renamed into place: a failure leaves
        neither a partial folder nor a temporary one (`hf_varinit.io_utils.write_folder`).

        ``reference`` is where the card says the report lives (default: ``folder``); a caller that writes into a
        staging folder passes the final one.

        Raises:
            ReportError: ``folder`` exists, is not empty and ``overwrite`` is False.
        """
        title = title or "Calibrated optimal init: s0² = V(W) at its fixed point"
        rows = self.convergence_rows()
        table = _convergence_table(rows)
        report = VarianceReport.from_stats(self.final_stats, self.options, title=title)

        def write(tmp: Path) -> None:  # the staging folder: empty, so the report may be saved into it
            report.save(tmp, reference=reference or str(folder), extra_sections=[_card_section(self, table, command)])
            csv = "round,max_rel_change,worst_key,all_stationary,rule\n" + "".join(
                f"{r['round']},{r['max_rel_change']:.6g},{r['worst_key']},{r['all_stationary']},\"{r['rule']}\"\n"
                for r in rows)
            atomic_write_text(tmp / "convergence.csv", csv)
            atomic_write_text(tmp / "convergence.md", f"# Calibration convergence\n\n{table}\n\n{self._verdict()}\n")
            atomic_write_json(tmp / "calibration.json", json_safe({
                "converged": self.converged, "tol": self.tol, "rounds": len(self.history),
                "variances": self.variances, "history": self.history, "options": dataclasses.asdict(self.options),
                "metadata": self.metadata, "command": command,
            }))

        return write_folder(folder, {"": write}, overwrite=overwrite)

    def _verdict(self) -> str:
        last = self.history[-1]
        if self.converged:
            return (f"Converged after {len(self.history)} pilot run(s): max relative change "
                    f"{last['max_rel_change']:.3g} < tol {self.tol:g}.")
        return (f"**Not converged** after {len(self.history)} pilot run(s): max relative change "
                f"{last['max_rel_change']:.3g} >= tol {self.tol:g} (worst: `{last['worst_key']}`). The variances "
                "are the last pilot's V(W); run more rounds or a longer pilot.")


def _convergence_table(rows: list[dict]) -> str:
    cells = [{**r, "worst_key": f"`{r['worst_key']}`"} for r in rows]
    return markdown_table(cells, ["round", "rule", "max_rel_change", "worst_key", "all_stationary"],
                          ["round", "init rule", "max relative change", "worst key", "all stationary"])


def _card_section(result: CalibrationResult, table: str, command: str | None) -> str:
    first, last = result.history[0], result.history[-1]
    keys = list(result.variances)
    per_key = markdown_table(
        [{"key": f"`{k}`", "init": first["init"].get(k, math.nan), "first": first["values"][k],
          "last": last["values"][k]} for k in keys],
        ["key", "init", "first", "last"], ["key", "s0² of round 0", "V(W) round 0", "calibrated V(W)"])
    meta = "\n".join(f"- {k}: {v}" for k, v in result.metadata.items())
    regen = f"\n## Regenerate\n\n```bash\n{command}\n```\n" if command else ""
    return f"""
## Calibration (fixed point of s0² = V(W))

Each round initialises the model with the previous round's V(W) (round 0: the initial rule), runs the pilot and
measures V(W) again; relative change = |V_new − s0²| / s0² per key, the max over keys below. Stop when it is under
tol = {result.tol:g}.

{table}

{result._verdict()}

{per_key}

Pilot settings:

{meta}
{regen}"""


def scaled_rule(model: Any, rule: str | dict, scale: float) -> str | dict:
    """``rule`` with every tracked tensor's variance multiplied by ``scale`` (an ``optimal`` variance table with
    ``rule`` as the fallback for the rest); ``rule`` itself when ``scale`` is 1.

    Raises:
        ConfigError: ``scale`` is not a finite number > 0, or ``rule`` gives a tracked tensor no std.
    """
    if isinstance(scale, bool) or not isinstance(scale, (int, float)) or not (scale > 0 and math.isfinite(scale)):
        raise ConfigError(f"start scale {scale!r} must be a finite number > 0, e.g. 0.5, 1 or 2")
    if scale == 1:
        return rule
    tracked = tracked_shapes(model)
    stds = {row.key: row.std for row in init_plan(model, rule) if row.key in tracked}
    missing = [k for k in tracked if not stds.get(k)]
    if missing:
        raise ConfigError(f"start scale {scale:g}: rule {rule!r} gives {missing[0]!r} no std to scale; start from a "
                          "rule with a std per tensor, e.g. kaiming")
    return {"name": "optimal", "variances": {k: scale * v * v for k, v in stds.items()},
            **({"fallback": rule} if isinstance(rule, str) else {})}


def calibrate(
    build_model: Callable[[Any], Any],
    pilot: Callable[[Any], Any],
    *,
    rounds: int = 4,
    tol: float = 0.05,
    initial_rule: str | dict = "kaiming",
    start_scale: float = 1.0,
    options: AnalysisOptions | None = None,
    log: Callable[[str], None] | None = None,
) -> CalibrationResult:
    """Find the fixed point s0^2 = V(W) by repeated pilot runs.

    Args:
        build_model (`Callable[[rule], model]`): builds a fresh model initialised with ``rule`` (a spec string or
            dict such as ``{"name": "optimal", "variances": {...}}``). Use a fixed seed for a deterministic map.
        pilot (`Callable[[model], VarianceStats]`): trains the model and returns its recorded statistics.
        rounds (`int`): the most pilot runs.
        tol (`float`): convergence threshold on the max relative change over keys.
        initial_rule (`str | dict`): the init of round 0.
        start_scale (`float`): round 0 at ``initial_rule`` with every tracked variance times this (`scaled_rule`).
        options (`AnalysisOptions`): steady-state analysis settings (V(W) = window mean of ``options.stat``).

    Returns:
        `CalibrationResult`.

    Raises:
        ConfigError: ``rounds < 1`` or ``tol <= 0``.
        NonFiniteLossError: a pilot produced a non-finite or non-positive V(W) (diverged: lower the lr).
    """
    if not isinstance(rounds, int) or rounds < 1:
        raise ConfigError(f"calibrate: rounds={rounds!r} must be an integer >= 1")
    if not (isinstance(tol, (int, float)) and tol > 0):
        raise ConfigError(f"calibrate: tol={tol!r} must be a number > 0, e.g. 0.05")
    options = options or AnalysisOptions()
    log = log or (lambda msg: print(msg, file=sys.stderr, flush=True))
    rule: Any = scaled_rule(build_model(initial_rule), initial_rule, start_scale) if start_scale != 1 else initial_rule
    previous: dict[str, float] | None = None
    history: list[dict] = []
    stats = None
    for r in range(rounds):
        stats = pilot(build_model(rule))
        analysis = analyze(stats, options)
        values = {k: a.v_w for k, a in analysis.items()}
        bad = [k for k, v in values.items() if v is None or not math.isfinite(v) or v <= 0]
        if bad:
            raise NonFiniteLossError(f"calibrate round {r}: V(W) of {bad} is not finite and > 0 (the pilot "
                                     "diverged?); lower the pilot's learning rate or shorten it")
        if previous is None:
            init = {k: a.init_var for k, a in analysis.items()}
        else:
            init = previous
        rel = {k: abs(values[k] - init[k]) / init[k] for k in values if init.get(k)}
        worst = max(rel, key=rel.get) if rel else None
        max_rel = rel[worst] if worst else math.inf
        history.append({
            "round": r, "rule": _describe(rule), "max_rel_change": max_rel, "worst_key": worst,
            "values": values, "init": {k: v for k, v in init.items() if v is not None}, "rel_change": rel,
            "stationary": {k: a.stationary for k, a in analysis.items()},
        })
        log(f"calibrate: round {r} ({_describe(rule)}): max relative change {max_rel:.4g} ({worst})")
        previous = values
        if max_rel < tol:
            break
        rule = {"name": "optimal", "variances": values}
    return CalibrationResult(variances=dict(previous), history=history, converged=history[-1]["max_rel_change"] < tol,
                             final_stats=stats, tol=float(tol), options=options)


def _describe(rule: Any) -> str:
    if isinstance(rule, Mapping) and rule.get("name") == "optimal" and "variances" in rule:
        return "optimal (previous round's V(W))"
    return rule if isinstance(rule, str) else json.dumps(rule, default=str)


# ----------------------------------------------------------------------------- pilots by name


def _language_model_pilot(settings: Any):
    """GPT-2 / Llama: every round a short run of the pretraining loop with the YAML ``settings.config``."""
    if not getattr(settings, "config", None):
        raise ConfigError(f"calibrate --model {getattr(settings, 'model', 'gpt2')} needs --config <pretraining YAML>, "
                          "e.g. configs/gpt2-12l-tiny.yaml")
    return lm_pilot_factory(settings)


PILOT_FACTORIES: dict[str, PilotFactory] = {"gpt2": _language_model_pilot, "llama": _language_model_pilot}


def register_pilot_factory(name: str, factory: PilotFactory, *, overwrite: bool = False) -> None:
    """Plug a model into `calibrate_pilot` and ``hf-varinit calibrate --model <name>``.

    A distribution can plug one in without being imported: an ``hf_varinit.pilots`` entry point ``name =
    "module:factory"`` (`hf_varinit.plugins`), which `pilot_factory` resolves on lookup.

    Args:
        name (`str`): the pilot's name (``--model``).
        factory (`PilotFactory`): ``factory(settings) -> (build_model, pilot, metadata)``, where ``settings`` holds
            the pilot's settings as attributes (the parsed command line: ``settings.config`` is ``--config``, e.g.
            a GPT-2 YAML). ``build_model(rule)`` builds a fresh model with that init rule and ``pilot(model)``
            trains it and returns its `VarianceStats`; ``metadata`` goes into the card. For the command line a
            factory may also carry ``settings_class`` and more (see `hf_varinit.cli.calibrate`).
        overwrite (`bool`): replace a pilot of the same name.

    Raises:
        ConfigError: ``name`` is taken and ``overwrite`` is False.
    """
    if name in PILOT_FACTORIES and not overwrite:
        raise ConfigError(f"a calibration pilot named {name!r} exists; pass overwrite=True to replace it")
    PILOT_FACTORIES[name] = factory


def pilot_factory(name: str) -> PilotFactory:
    """The pilot factory ``name``: a built-in or registered one (`PILOT_FACTORIES`), else the ``hf_varinit.pilots``
    entry point of that name (its module imported now).

    Raises:
        ConfigError: no pilot of that name; the message lists those there are (and says where the lab's live).
    """
    factory = PILOT_FACTORIES.get(name) or load_entry(PILOTS, name)
    if factory is None:
        available = sorted({*PILOT_FACTORIES, *entry_names(PILOTS)})
        raise ConfigError(lab_missing(PILOTS, name, f"calibrate --model {name}") or
                          f"calibrate: --model {name!r} has no pilot; available: {available} (register one with "
                          "hf_varinit.calibrate.register_pilot_factory)")
    return factory


def calibrate_pilot(
    model: str | PilotFactory,
    settings: Any,
    *,
    rounds: int = 4,
    tol: float = 0.05,
    initial_rule: str | dict = "kaiming",
    start_scale: float = 1.0,
    options: AnalysisOptions | None = None,
    output: str | Path | None = None,
    overwrite: bool = False,
    title: str | None = None,
    command: str | None = None,
    log: Callable[[str], None] | None = None,
) -> CalibrationResult:
    """`calibrate` with the pilot registered as ``model``; writes the report folder ``output`` if given.

    Args:
        model (`str` or `PilotFactory`): a pilot's name (`pilot_factory`): ``gpt2``, ``llama``, ``mlp`` with the
            lab installed, or one of `register_pilot_factory`; or the factory itself.
        settings (`Any`): the pilot's settings as attributes, passed to its factory.
        rounds, tol, initial_rule, start_scale, options, log: as for `calibrate`.
        output (`str` or `Path`, *optional*): the report folder; title and command go into its card.
        overwrite (`bool`): replace ``output`` if it exists.

    Returns:
        `CalibrationResult`, its ``metadata`` the factory's plus the calibration settings and the wall time.

    Raises:
        ConfigError: no pilot is registered as ``model``.
        ReportError: ``output`` exists, is not empty and ``overwrite`` is False (checked before any pilot runs).
    """
    if output:
        check_overwrite(output, overwrite)
    build_model, pilot, metadata = (pilot_factory(model) if isinstance(model, str) else model)(settings)
    t0 = time.perf_counter()
    result = calibrate(build_model, pilot, rounds=rounds, tol=tol, initial_rule=initial_rule,
                       start_scale=start_scale, options=options, log=log)
    result.metadata = {**metadata, "initial_rule": str(initial_rule), "start_scale": start_scale, "rounds_max": rounds,
                       "wall_seconds": round(time.perf_counter() - t0, 1)}
    if output:
        result.save(output, title=title, command=command, overwrite=overwrite)
    return result


def start_table(results: Mapping[float, CalibrationResult]) -> str:
    """Calibrated V(W) per tracked key (rows) for each start scale (columns), with the spread max/min per key."""
    scales = list(results)
    keys = list(next(iter(results.values())).variances)
    rows = []
    for k in keys:
        values = [results[s].variances[k] for s in scales]
        rows.append({"key": f"`{k}`", **{f"x{s:g}": v for s, v in zip(scales, values)},
                     "spread": max(values) / min(values)})
    rows.append({"key": "converged", **{f"x{s:g}": f"{results[s].converged} ({len(results[s].history)} rounds)"
                                        for s in scales}, "spread": ""})
    return markdown_table(rows, ["key", *(f"x{s:g}" for s in scales), "spread"],
                          ["tensor", *(f"start {s:g} × init variance" for s in scales), "max / min over starts"])
