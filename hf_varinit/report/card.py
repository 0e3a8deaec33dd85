"""The model card (``README.md``) of a variance report: plain data rendered into ``card_template.md``.

The card is a `huggingface_hub.ModelCard` built with ``ModelCard.from_template``; its YAML metadata is a
`ModelCardData`, and every table goes through `hf_varinit.report.tables.markdown_table`.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from huggingface_hub import ModelCard, ModelCardData

from hf_varinit.record.stats_file import VarianceStats
from hf_varinit.report.dynamics import depth_dynamics
from hf_varinit.report.plots import PLOT_FILES, display_roles, role_keys
from hf_varinit.report.steady_state import AnalysisOptions, KeyAnalysis, layer_equilibration
from hf_varinit.report.tables import format_cell, markdown_table

__all__ = ["CARD_TEMPLATE", "build_card", "card_data", "layer_table"]

CARD_TEMPLATE = Path(__file__).with_name("card_template.md")
_ROLE_TITLES = {"q": "Q", "k": "K", "v": "V"}


def _fmt(x: Any) -> str:
    """A card value; a negative answer is bold so that it stands out."""
    return "**no**" if x is False else format_cell(x)


def layer_table(tensors: dict[str, KeyAnalysis]) -> str:
    """Markdown table: layer, V(W) per displayed role, stationary?, equilibration step."""
    roles = display_roles(tensors)
    by_layer: dict[int, dict[str, KeyAnalysis]] = {}
    for role in roles:
        for depth, key in role_keys(tensors, role):
            by_layer.setdefault(depth, {})[role] = tensors[key]
    eq = layer_equilibration(tensors)
    rows = []
    for depth in sorted(by_layer):
        cells = by_layer[depth]
        step = eq.get(depth) if depth in eq else max(
            (a.equilibration_step for a in cells.values() if a.equilibration_step is not None), default=None)
        rows.append({"layer": depth, **{r: cells[r].v_w if r in cells else None for r in roles},
                     "stationary": all(a.stationary for a in cells.values()), "step": step})
    headers = ["layer", *(f"V(W) {_ROLE_TITLES.get(r, r)}" for r in roles), "stationary?", "equilibration step"]
    return markdown_table(rows, ["layer", *roles, "stationary", "step"], headers, cell=_fmt)


def _other_table(tensors: dict[str, KeyAnalysis]) -> str:
    shown = {k for r in display_roles(tensors) for _, k in role_keys(tensors, r)}
    rows = [{"key": f"`{a.key}`", "role": a.role, "v_w": a.v_w, "stationary": a.stationary,
             "step": a.equilibration_step, "ratio": a.ratio} for k, a in tensors.items() if k not in shown]
    if not rows:
        return ""
    headers = ["key", "role", "V(W)", "stationary?", "equilibration step", "V(W) / init var"]
    return markdown_table(rows, ["key", "role", "v_w", "stationary", "step", "ratio"], headers, cell=_fmt)


def card_data(
    *, model_type: str, n_layer: int | None, rule: str | None, config: dict, datasets: Sequence[str],
    source: str | None,
) -> ModelCardData:
    """The card's YAML metadata.

    Args:
        model_type (`str`), n_layer (`int` or `None`), rule (`str` or `None`): the measured run.
        config (`dict`): the model config (written as plain YAML types).
        datasets (`Sequence[str]`): the training datasets. source (`str` or `None`): ``training`` or ``checkpoint``.
    """
    tags = ["hf-varinit", "weight-initialization", "variance-report", model_type]
    return ModelCardData(
        library_name="hf_varinit", tags=list(dict.fromkeys(tags)), datasets=list(datasets) or None,
        model_type=model_type, n_layer=n_layer, init_rule=rule, source=source,
        hf_varinit_config=json.loads(json.dumps(config, default=str)),  # plain YAML types only
    )


def _run_table(model_type: str, n_layer: int | None, rule: str | None, metadata: dict, datasets: Sequence[str],
               stats: VarianceStats | None) -> str:
    m = metadata
    steps = (f"{len(stats)} records, steps {int(stats.step[0])}–{int(stats.step[-1])}"
             if stats is not None and len(stats) else None)
    versions = m.get("versions")
    if isinstance(versions, dict):
        versions = ", ".join(f"{k} {v}" for k, v in versions.items())
    rows = [("model type", model_type), ("layers", n_layer), ("init rule", rule),
            ("optimizer", m.get("optimizer")), ("learning rate", m.get("lr")),
            ("batch size", m.get("batch_size")), ("mixed precision", m.get("mixed_precision")),
            ("steps", steps), ("seed", m.get("seed")), ("dataset", ", ".join(datasets) or None),
            ("measured from", m.get("source")), ("versions", versions)]
    return markdown_table([{"name": k, "value": v} for k, v in rows], ["name", "value"], ["", ""], cell=_fmt)


def _caveats(options: AnalysisOptions, metadata: dict, tensors: dict[str, KeyAnalysis]) -> list[str]:
    o, m = options, metadata
    items = [
        f"V(W) depends on the optimizer and learning rate it was measured under (here: "
        f"{_fmt(m.get('optimizer'))}, lr {_fmt(m.get('lr'))}). The s0² = V(W) condition is derived for SGD; "
        "with adaptive optimizers treat it as an empirical target.",
        f"V(W) is the mean of `{o.stat}` over the trailing window (the last max({o.min_window}, "
        f"⌈{o.window_fraction:g}·S⌉) records); a tensor is stationary when the fitted trend changes it by "
        f"less than {o.drift_tol:g} (relative) across that window. Equilibration uses a ±{o.band:g} band "
        "on the variance.",
    ]
    bad = [k for k, a in tensors.items() if not a.stationary]
    if bad:
        items.append("**Not stationary** (V(W) is the last recorded value, not a steady state): "
                     + ", ".join(f"`{k}` ({_fmt(tensors[k].reason)})" for k in bad) + ".")
    else:
        items.append("Every tracked tensor reached a steady state within the tolerances.")
    if m.get("source") == "checkpoint":
        items.append("Measured from the final weights of a checkpoint, not from a training trajectory: the "
                     "'steady state' is a single snapshot and equilibration cannot be judged.")
    return items


def _dynamics_table(tensors: dict[str, KeyAnalysis], metadata: dict, stats: VarianceStats | None) -> str:
    if stats is None or metadata.get("source") == "checkpoint":
        return ""
    dynamics = depth_dynamics(stats, equilibration=layer_equilibration(tensors))
    return "" if dynamics is None else dynamics.to_markdown()


def build_card(
    tensors: dict[str, KeyAnalysis], *, reference: str, options: AnalysisOptions, model_type: str,
    n_layer: int | None = None, rule: str | None = None, config: dict | None = None, metadata: dict | None = None,
    datasets: Sequence[str] = (), stats: VarianceStats | None = None, title: str | None = None,
    extra_sections: Sequence[str] = (),
) -> ModelCard:
    """Render the model card of a variance report.

    Args:
        tensors (`dict[str, KeyAnalysis]`): the steady-state analysis per tracked key.
        reference (`str`): what the usage snippet passes as ``report=`` (a folder or a hub repo id).
        options (`AnalysisOptions`): the tolerances the analysis used (quoted in the caveats).
        model_type (`str`), n_layer (`int`, *optional*), rule (`str`, *optional*), config (`dict`, *optional*):
            the measured model and its init rule.
        metadata (`dict`, *optional*): the run's metadata (optimizer, lr, seed, source, versions, ...).
        datasets (`Sequence[str]`): the training datasets.
        stats (`VarianceStats`, *optional*): the record; adds the step range, the variance curves and the
            depth dynamics.
        title (`str`, *optional*): the card's heading (default: "Variance report: <model_type>, <n> layers").
        extra_sections (`Sequence[str]`): markdown sections appended after the caveats (e.g. a calibration).

    Returns:
        `huggingface_hub.ModelCard`.
    """
    metadata = metadata or {}
    title = title or f"Variance report: {model_type}" + (f", {n_layer} layers" if n_layer is not None else "")
    data = card_data(model_type=model_type, n_layer=n_layer, rule=rule, config=config or {}, datasets=datasets,
                     source=metadata.get("source"))
    return ModelCard.from_template(
        data, template_path=str(CARD_TEMPLATE), title=title, reference=reference,
        spec=f"optimal:report={reference}",
        run_table=_run_table(model_type, n_layer, rule, metadata, datasets, stats),
        layer_table=layer_table(tensors), other_table=_other_table(tensors),
        plots=[name for name in PLOT_FILES if name != PLOT_FILES[0] or stats is not None],
        dynamics_table=_dynamics_table(tensors, metadata, stats),
        caveats=_caveats(options, metadata, tensors), extra_sections=[s.strip("\n") for s in extra_sections],
    )
