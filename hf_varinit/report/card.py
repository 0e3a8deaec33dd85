"""The model card (``README.md``) of a variance report: plain data rendered into ``card_template.md``.

The card is a `huggingface_hub.ModelCard` built with ``ModelCard.from_template``; its YAML metadata is a
`ModelCardData`, and every table goes through `hf_varinit.report.tables.markdown_table`. The analyses (the
steady state, the depth dynamics, the run's `RunRecipe`) return data; this module is where they become markdown.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from huggingface_hub import ModelCard, ModelCardData

from hf_varinit.record.recipe import RunRecipe
from hf_varinit.record.stats_file import VarianceStats
from hf_varinit.report.dynamics import DepthDynamics, depth_dynamics
from hf_varinit.report.options import DEFAULT_LICENSE, AnalysisOptions
from hf_varinit.report.plots import display_roles, plot_files, role_keys
from hf_varinit.report.steady_state import KeyAnalysis, is_snapshot
from hf_varinit.report.tables import format_cell, markdown_table

__all__ = ["CARD_TEMPLATE", "build_card", "card_data", "dynamics_table", "layer_table", "recipe_rows"]

CARD_TEMPLATE = Path(__file__).with_name("card_template.md")
_ROLE_TITLES = {"q": "Q", "k": "K", "v": "V"}


def _fmt(x: Any) -> str:
    """A card value; a negative answer is bold so that it stands out."""
    return "**no**" if x is False else format_cell(x)


def layer_table(tensors: dict[str, KeyAnalysis], *, snapshot: bool = False) -> str:
    """Markdown table: layer, V(W) per displayed role, stationary?, equilibration step (of the displayed roles).

    The equilibration step of a row is the latest over the row's own tensors (Q, K and V for a transformer), not
    over every tensor of the layer; the header says which. A snapshot (``snapshot=True``) has neither column.
    """
    roles = display_roles(tensors)
    by_layer: dict[int, dict[str, KeyAnalysis]] = {}
    for role in roles:
        for depth, key in role_keys(tensors, role):
            by_layer.setdefault(depth, {})[role] = tensors[key]
    rows = []
    for depth in sorted(by_layer):
        cells = by_layer[depth]
        steps = [a.equilibration_step for a in cells.values()]
        step = None if any(s is None for s in steps) else max(steps)  # type: ignore[type-var]
        rows.append({"layer": depth, **{r: cells[r].v_w if r in cells else None for r in roles},
                     "stationary": all(a.stationary for a in cells.values()), "step": step})
    titles = [_ROLE_TITLES.get(r, r) for r in roles]
    headers = ["layer", *(f"V(W) {t}" for t in titles)]
    columns = ["layer", *roles]
    if not snapshot:
        headers += ["stationary?", f"equilibration step ({'/'.join(titles)})"]
        columns += ["stationary", "step"]
    return markdown_table(rows, columns, headers, cell=_fmt)


def _other_table(tensors: dict[str, KeyAnalysis], snapshot: bool = False) -> str:
    shown = {k for r in display_roles(tensors) for _, k in role_keys(tensors, r)}
    rows = [{"key": f"`{a.key}`", "role": a.role, "v_w": a.v_w, "stationary": a.stationary,
             "step": a.equilibration_step, "ratio": a.ratio} for k, a in tensors.items() if k not in shown]
    if not rows:
        return ""
    if snapshot:
        return markdown_table(rows, ["key", "role", "v_w"], ["key", "role", "V(W) = E[W²]"], cell=_fmt)
    headers = ["key", "role", "V(W)", "stationary?", "equilibration step", "V(W) / init var"]
    return markdown_table(rows, ["key", "role", "v_w", "stationary", "step", "ratio"], headers, cell=_fmt)


def card_data(
    *, model_type: str, n_layer: int | None, rule: str | None, datasets: Sequence[str], source: str | None,
    license: str | None = None, base_model: str | None = None,
) -> ModelCardData:
    """The card's YAML metadata, in the fields the hub understands (the full model config goes to ``config.json``).

    Args:
        model_type (`str`), n_layer (`int` or `None`), rule (`str` or `None`): the measured model and its init rule.
        datasets (`Sequence[str]`): hub dataset ids only (local corpora are described in the card's text).
        source (`str` or `None`): ``training`` or ``checkpoint``.
        license (`str`, *optional*): a hub license id (default ``apache-2.0``).
        base_model (`str`, *optional*): the hub model id of the weights a snapshot report was made from.
    """
    tags = ["hf-varinit", "weight-initialization", "variance-report", model_type]
    return ModelCardData(
        license=license or DEFAULT_LICENSE, library_name="hf_varinit", tags=list(dict.fromkeys(tags)),
        datasets=list(datasets) or None, base_model=base_model, model_type=model_type, n_layer=n_layer,
        init_rule=rule, source=source,
    )


def recipe_rows(recipe: RunRecipe) -> list[tuple[str, str]]:
    """The card's rows of the training recipe, each field the record does not give shown as ``unknown``."""
    r = recipe
    rows = [("optimizer", r.optimizer), ("learning rate", r.lr), ("lr schedule", r.schedule_text()),
            ("training steps", r.max_steps), ("weight decay", r.weight_decay), ("momentum", r.momentum),
            ("batch size", r.batch_size)]
    return [(name, "unknown" if value is None else format_cell(value)) for name, value in rows]


def _run_table(model_type: str, n_layer: int | None, rule: str | None, metadata: dict, datasets: Sequence[str],
               stats: VarianceStats | None, recipe: RunRecipe) -> str:
    m = metadata
    snapshot = is_snapshot(m)
    data = m.get("dataset") if isinstance(m.get("dataset"), str) else None
    data = ", ".join(dict.fromkeys([*([data] if data else []), *(f"hub: {d}" for d in datasets)])) or None
    versions = m.get("versions")
    if isinstance(versions, dict):
        versions = ", ".join(f"{k} {v}" for k, v in versions.items())
    if snapshot:
        rows = [("model type", model_type), ("layers", n_layer), ("init rule", rule or "unknown"),
                ("weights", m.get("checkpoint")),
                ("what", "one set of weights (such as a model's final weights), not a training record")]
    else:
        steps = (f"{len(stats)} records, steps {int(stats.step[0])}–{int(stats.step[-1])}"
                 if stats is not None and len(stats) else None)
        rows = [("model type", model_type), ("layers", n_layer), ("init rule", rule), *recipe_rows(recipe),
                ("mixed precision", m.get("mixed_precision")), ("steps", steps), ("seed", m.get("seed")),
                ("dataset", data), ("measured from", m.get("source")), ("versions", versions)]
    return markdown_table([{"name": k, "value": v} for k, v in rows], ["name", "value"], ["", ""], cell=_fmt)


def _caveats(options: AnalysisOptions, metadata: dict, tensors: dict[str, KeyAnalysis], recipe: RunRecipe
             ) -> list[str]:
    o, m = options, metadata
    if is_snapshot(m):
        return [
            "V(W) is the second moment E[W²] of these weights alone. How they were trained (optimizer, learning "
            "rate, steps) is not recorded here, and V(W) depends on it.",
            "One set of weights says nothing about how the variances moved during training; a report from a "
            "training record (`hf-varinit report <run folder>`) shows that.",
        ]
    items = [
        f"V(W) depends on the optimizer and learning rate it was measured under (here: "
        f"{recipe.optimizer or 'optimizer unknown'}, lr {'unknown' if recipe.lr is None else _fmt(recipe.lr)}). "
        "The s0² = V(W) condition is derived for SGD; "
        "with adaptive optimizers treat it as an empirical target.",
        f"V(W) is the mean of `{o.stat}` over the trailing window (the last max({o.min_window}, "
        f"⌈{o.window_fraction:g}·S⌉) records); a tensor is stationary when the fitted trend changes it by "
        f"less than {o.drift_tol:g} (relative) across that window. Equilibration uses a ±{o.band:g} band "
        "on the variance.",
        _lr_caveat(o, tensors),
    ]
    bad: dict[str, list[str]] = {}
    for k, a in tensors.items():
        if a.stationary is False:
            bad.setdefault(_fmt(a.reason), []).append(f"`{k}`")
    if bad:
        items.append("**Not stationary** (V(W) is the last recorded value, not a steady state): " + "; ".join(
            f"{'all ' + str(len(keys)) + ' tracked tensors' if len(keys) == len(tensors) > 1 else ', '.join(keys)} "
            f"({reason})" for reason, keys in bad.items()) + ".")
    else:
        items.append("Every tracked tensor reached a steady state within the tolerances.")
    return items


def _lr_caveat(options: AnalysisOptions, tensors: dict[str, KeyAnalysis]) -> str:
    """How the stationarity test took the lr schedule into account, with the window's share of the lr budget."""
    window = next((a for a in tensors.values() if a.window_lr_fraction is not None), None)
    if window is None:
        return ("The stationarity test did not use the lr schedule, which the record does not give whole (its lr, "
                "lr schedule, warmup steps and training steps, as `hf-varinit pretrain` records them): it cannot tell "
                "a plateau from a decayed learning rate.")
    return (f"Schedule-aware: a tensor is called stationary only when the window's mean lr is at least "
            f"{options.min_lr_fraction:g} of the peak lr. The trailing window (steps {window.window[0]}–"
            f"{window.window[1]}) got {100 * window.window_lr_share:.3g}% of the run's lr budget, at a mean lr of "
            f"{100 * window.window_lr_fraction:.3g}% of the peak (`qkv_variance_vs_cumulative_lr.png` plots the "
            "variance against the lr budget).")


def dynamics_table(dynamics: DepthDynamics) -> str:
    """The depth-dynamics section's body: the equilibration step per layer and role, and how many have one."""
    titles = [_ROLE_TITLES.get(r, r) for r in dynamics.roles]
    rows = [{"layer": d.layer, **d.steps, "latest": d.latest} for d in dynamics.layers]
    headers = ["layer", *(f"equilibration step {t}" for t in titles), f"layer (latest of {'/'.join(titles)})"]
    table = markdown_table(rows, ["layer", *dynamics.roles, "latest"], headers)
    n, total = dynamics.equilibrated, dynamics.tensors
    if n == 0:  # a table of dashes says nothing
        return (f"None of the {total} {'/'.join(titles)} tensors has an equilibration step: none is stationary, or "
                "each ended outside the band (see the caveats), so no layer is called equilibrated.")
    if n == total:
        count = f"Every one of the {total} {'/'.join(titles)} tensors equilibrated."
    else:
        count = (f"{n} of the {total} {'/'.join(titles)} tensors equilibrated; the other {total - n} (—) are not "
                 "stationary, or ended outside the band (see the caveats).")
    return f"{table}\n\n{count}"


def _intro(metadata: dict) -> str:
    if is_snapshot(metadata):
        return (f"An `hf_varinit` variance report with the statistics of one set of weights: "
                f"{metadata.get('checkpoint')}, not a training record. V(W) below is the second moment E[W²] of each "
                "tracked weight tensor (Q, K and V separately) in these weights. Initialising a new model with "
                "s0² = V(W) per tensor follows the optimal-variance condition of Horii & Has (arXiv 2508.12834).")
    return ("An `hf_varinit` variance report: the steady-state second moment V(W) = E[W²] of each tracked weight "
            "tensor (Q, K and V separately), measured during pretraining. Initialising a new model with s0² = V(W) "
            "per tensor is the optimal-variance condition of Horii & Has (arXiv 2508.12834).")


def build_card(
    tensors: dict[str, KeyAnalysis], *, reference: str, options: AnalysisOptions, model_type: str,
    n_layer: int | None = None, rule: str | None = None, metadata: dict | None = None,
    datasets: Sequence[str] = (), stats: VarianceStats | None = None, title: str | None = None,
    extra_sections: Sequence[str] = (), license: str | None = None, base_model: str | None = None,
    recipe: RunRecipe | None = None,
) -> ModelCard:
    """Render the model card of a variance report.

    Args:
        tensors (`dict[str, KeyAnalysis]`): the steady-state analysis per tracked key.
        reference (`str`): what the usage snippet passes as ``report=`` (a folder or a hub repo id).
        options (`AnalysisOptions`): the tolerances the analysis used (quoted in the caveats).
        model_type (`str`), n_layer (`int`, *optional*), rule (`str`, *optional*): the measured model and its
            init rule.
        metadata (`dict`, *optional*): the run's metadata (optimizer, lr, seed, source, dataset, versions, ...).
            ``source == "checkpoint"`` makes a card of one set of weights: no stationarity, equilibration or
            trajectory.
        datasets (`Sequence[str]`): hub ids of the training datasets (the card's ``datasets``).
        stats (`VarianceStats`, *optional*): the record; adds the step range, the variance curves and the
            depth dynamics (the equilibration step per layer of Q, K and V).
        title (`str`, *optional*): the card's heading (default: "Variance report: <model_type>, <n> layers").
        extra_sections (`Sequence[str]`): markdown sections appended after the caveats (e.g. a calibration).
        license (`str`, *optional*): the card's license (default ``apache-2.0``).
        base_model (`str`, *optional*): the hub model id a snapshot report was made from.
        recipe (`RunRecipe`, *optional*): how the run was trained (default: read from ``metadata``).

    Returns:
        `huggingface_hub.ModelCard`.
    """
    metadata = metadata or {}
    snapshot = is_snapshot(metadata)
    recipe = recipe if recipe is not None else RunRecipe.from_metadata(metadata)
    dynamics = None if snapshot else depth_dynamics(tensors)
    title = title or f"Variance report: {model_type}" + (f", {n_layer} layers" if n_layer is not None else "")
    data = card_data(model_type=model_type, n_layer=n_layer, rule=rule, datasets=datasets,
                     source=metadata.get("source"), license=license, base_model=base_model)
    return ModelCard.from_template(
        data, template_path=str(CARD_TEMPLATE), title=title, reference=reference, intro=_intro(metadata),
        spec=f"optimal:report={reference}", snapshot=snapshot,
        run_table=_run_table(model_type, n_layer, rule, metadata, datasets, stats, recipe),
        layer_table=layer_table(tensors, snapshot=snapshot), other_table=_other_table(tensors, snapshot),
        plots=plot_files(stats, snapshot), band=options.band,
        dynamics_table="" if dynamics is None else dynamics_table(dynamics),
        caveats=_caveats(options, metadata, tensors, recipe), extra_sections=[s.strip("\n") for s in extra_sections],
    )
