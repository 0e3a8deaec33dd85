"""The model card (``README.md``) of a variance report, built with ``huggingface_hub.ModelCard``."""

from __future__ import annotations

import json
import math
from typing import TYPE_CHECKING, Any

from hf_varinit.report.plots import PLOT_FILES, display_roles, role_keys

if TYPE_CHECKING:
    from huggingface_hub import ModelCard, ModelCardData

    from hf_varinit.report.report import VarianceReport

__all__ = ["build_card", "card_data", "layer_table"]

_ROLE_TITLES = {"q": "Q", "k": "K", "v": "V"}


def _fmt(x: Any) -> str:
    if x is None:
        return "—"
    if isinstance(x, bool):
        return "yes" if x else "**no**"
    if isinstance(x, float):
        return f"{x:.4g}" if math.isfinite(x) else str(x)
    return str(x).replace("|", "\\|").replace("\n", " ")


def layer_table(report: VarianceReport) -> str:
    """Markdown table: layer, V(W) per displayed role, stationary?, equilibration step."""
    roles = display_roles(report.tensors)
    by_layer: dict[int, dict[str, Any]] = {}
    for role in roles:
        for depth, key in role_keys(report.tensors, role):
            by_layer.setdefault(depth, {})[role] = report.tensors[key]
    eq = report.layers
    head = ["layer", *(f"V(W) {_ROLE_TITLES.get(r, r)}" for r in roles), "stationary?", "equilibration step"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for depth in sorted(by_layer):
        cells = by_layer[depth]
        stationary = all(a.stationary for a in cells.values())
        step = eq.get(depth) if depth in eq else max(
            (a.equilibration_step for a in cells.values() if a.equilibration_step is not None), default=None)
        row = [str(depth)] + [_fmt(cells[r].v_w) if r in cells else "—" for r in roles]
        row += [_fmt(stationary), _fmt(step)]
        lines.append("| " + " | ".join(row) + " |")
    return "\n".join(lines)


def _other_table(report: VarianceReport) -> str:
    shown = {k for r in display_roles(report.tensors) for _, k in role_keys(report.tensors, r)}
    rest = [a for k, a in report.tensors.items() if k not in shown]
    if not rest:
        return ""
    lines = ["| key | role | V(W) | stationary? | equilibration step | V(W) / init var |",
             "|---|---|---|---|---|---|"]
    for a in rest:
        lines.append(f"| `{a.key}` | {_fmt(a.role)} | {_fmt(a.v_w)} | {_fmt(a.stationary)} | "
                     f"{_fmt(a.equilibration_step)} | {_fmt(a.ratio)} |")
    return "\n".join(lines)


def card_data(report: VarianceReport) -> ModelCardData:
    """The card's YAML metadata."""
    from huggingface_hub import ModelCardData

    tags = ["hf-varinit", "weight-initialization", "variance-report", report.model_type]
    return ModelCardData(
        library_name="hf_varinit", tags=list(dict.fromkeys(tags)), datasets=report.datasets or None,
        model_type=report.model_type, n_layer=report.n_layer, init_rule=report.rule,
        source=report.metadata.get("source"),
        hf_varinit_config=json.loads(json.dumps(report.config, default=str)),  # plain YAML types only
    )


def _run_rows(report: VarianceReport) -> str:
    m, stats = report.metadata, report.stats
    steps = (f"{len(stats)} records, steps {int(stats.step[0])}–{int(stats.step[-1])}"
             if stats is not None and len(stats) else None)
    versions = m.get("versions")
    if isinstance(versions, dict):
        versions = ", ".join(f"{k} {v}" for k, v in versions.items())
    rows = [("model type", report.model_type), ("layers", report.n_layer), ("init rule", report.rule),
            ("optimizer", m.get("optimizer")), ("learning rate", m.get("lr")),
            ("batch size", m.get("batch_size")), ("mixed precision", m.get("mixed_precision")),
            ("steps", steps), ("seed", m.get("seed")), ("dataset", ", ".join(report.datasets) or None),
            ("measured from", m.get("source")), ("versions", versions)]
    return "\n".join(["| | |", "|---|---|"] + [f"| {k} | {_fmt(v)} |" for k, v in rows])


def _caveats(report: VarianceReport) -> str:
    o, m = report.options, report.metadata
    items = [
        f"V(W) depends on the optimizer and learning rate it was measured under (here: "
        f"{_fmt(m.get('optimizer'))}, lr {_fmt(m.get('lr'))}). The s0² = V(W) condition is derived for SGD; "
        "with adaptive optimizers treat it as an empirical target.",
        f"V(W) is the mean of `{o.stat}` over the trailing window (the last max({o.min_window}, "
        f"⌈{o.window_fraction:g}·S⌉) records); a tensor is stationary when the fitted trend changes it by "
        f"less than {o.drift_tol:g} (relative) across that window. Equilibration uses a ±{o.band:g} band "
        "on the variance.",
    ]
    bad = report.nonstationary_keys
    if bad:
        items.append("**Not stationary** (V(W) is the last recorded value, not a steady state): "
                     + ", ".join(f"`{k}` ({_fmt(report.tensors[k].reason)})" for k in bad) + ".")
    else:
        items.append("Every tracked tensor reached a steady state within the tolerances.")
    if m.get("source") == "checkpoint":
        items.append("Measured from the final weights of a checkpoint, not from a training trajectory: the "
                     "'steady state' is a single snapshot and equilibration cannot be judged.")
    return "\n".join(f"- {x}" for x in items)


def _dynamics_section(report: VarianceReport) -> str:
    if report.stats is None or report.metadata.get("source") == "checkpoint":
        return ""
    from hf_varinit.report.dynamics import depth_dynamics

    dynamics = depth_dynamics(report.stats, equilibration=report.layers)
    if dynamics is None:
        return ""
    return f"""
## Depth dynamics of Q/K/V variance

Early change = |var(t_early)/var(0) − 1| over the first 10 % of training; half-change step = the first step
at which a tensor's variance has covered half of its total move (definitions in `hf_varinit.report.dynamics`).

{dynamics.to_markdown()}
"""


def build_card(report: VarianceReport, reference: str) -> ModelCard:
    """Build the model card; ``reference`` is what the usage snippet passes as ``report=``."""
    from huggingface_hub import ModelCard

    title = report.title or f"Variance report: {report.model_type}" + (
        f", {report.n_layer} layers" if report.n_layer is not None else "")
    spec = f"optimal:report={reference}"
    other = _other_table(report)
    plots = "\n\n".join(f"![{name[:-4]}]({name})" for name in PLOT_FILES
                        if name != PLOT_FILES[0] or report.stats is not None)
    body = f"""
# {title}

An `hf_varinit` variance report: the steady-state second moment
V(W) = E[W²] of each tracked weight tensor (Q, K and V separately), measured during pretraining. Initialising
a new model with s0² = V(W) per tensor is the optimal-variance condition of Horii & Has (arXiv 2508.12834).

## How the run was made

{_run_rows(report)}

## Steady-state variance per layer

{layer_table(report)}
{f"{chr(10)}Other tracked tensors:{chr(10)}{chr(10)}{other}{chr(10)}" if other else ""}
{plots}
{_dynamics_section(report)}
## Initialise a model from this report

```python
import hf_varinit as hv
from transformers import AutoConfig

report = hv.VarianceReport.load("{reference}")
kwargs = {{k: v for k, v in report.config.items() if k != "model_type"}}
cfg = AutoConfig.for_model(report.model_type, **kwargs)
model = hv.from_config(cfg, rule="{spec}")
```

or from the command line:

```bash
hf-varinit pretrain --init "{spec}"
```

## Caveats

{_caveats(report)}
"""
    return ModelCard(f"---\n{card_data(report).to_yaml()}\n---\n{body}")
