"""What the report of every init study shares: the card, the per-arm summary table, the figure, the pilot's cost.

The LM study (`hf_varinit.train.lm_study_report`) and the lab's MLP studies build their reports from these; the
statistics they print are `hf_varinit.train.study_stats`'.

Example:
    >>> rows = [{"arm": "kaiming", "seeds": 3, "loss_mean": 0.5, "loss_std": 0.1}]
    >>> print(summary_table(rows, [("arm", "arm"), ("seeds", "seeds"), ("loss", "final loss (mean ± std)")]))
    | arm | seeds | final loss (mean ± std) |
    |-------|---------|---------------------------|
    | kaiming | 3 | 0.5 ± 0.1 |
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from huggingface_hub import ModelCard, ModelCardData

from hf_varinit.arch.builder import config_from_dict
from hf_varinit.errors import HFVarInitError, StatsError
from hf_varinit.init.patch import from_config
from hf_varinit.init.roles import EMBEDDING_ROLES, iter_roles
from hf_varinit.init.rules import get_rule
from hf_varinit.record.stats_file import load_stats
from hf_varinit.reference_reports import bundled_report
from hf_varinit.report.report import VarianceReport
from hf_varinit.report.tables import markdown_table
from hf_varinit.train.study_stats import pm

__all__ = ["figure", "non_embedding_params", "pilot_cost", "run_cost", "seed_band", "study_card", "summary_table"]

CARD_TEMPLATE = "---\n{{ card_data }}\n---\n{{ body }}"  # YAML metadata, then the study's markdown

# a column of `summary_table`: (key, header) or (key, header, significant digits of a mean ± std cell)
Column = tuple[str, str] | tuple[str, str, int]


def study_card(*, tags: Sequence[str], datasets: Sequence[str], body: str, extra: dict | None = None) -> str:
    """A study's model card (``README.md``) text with YAML metadata, via ``huggingface_hub.ModelCard``.

    Args:
        tags (`Sequence[str]`): card tags (``hf-varinit`` is always first).
        datasets (`Sequence[str]`): hub ids of the datasets (may be empty).
        body (`str`): the markdown below the metadata.
        extra (`dict`, *optional*): further `ModelCardData` fields.
    """
    data = ModelCardData(library_name="hf_varinit", tags=list(dict.fromkeys(["hf-varinit", *tags])),
                         datasets=list(datasets) or None, **(extra or {}))
    return str(ModelCard.from_template(data, template_str=CARD_TEMPLATE, body=body))


def summary_table(rows: Sequence[Mapping[str, Any]], columns: Sequence[Column]) -> str:
    """The per-arm table of a study (markdown): one row per arm.

    A column whose ``key`` the rows hold as ``<key>_mean`` (and ``<key>_std``) is the mean ± std over seeds
    (`hf_varinit.train.study_stats.pm`, ``digits`` significant digits, 4 by default); any other is the cell as it is.
    """
    keys = [c[0] for c in columns]
    cells = []
    for row in rows:
        cells.append({key: pm(row[f"{key}_mean"], row.get(f"{key}_std"), *column[2:]) if f"{key}_mean" in row
                      else row.get(key) for key, column in zip(keys, columns)})
    return markdown_table(cells, keys, [c[1] for c in columns])


def figure(width: float, height: float) -> Any:
    """A matplotlib figure drawn off screen (no pyplot state), for a study's PNGs."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def seed_band(ax: Any, x: Sequence[float], mean: Sequence[float], std: Sequence[float | None], *, color: Any,
              label: str, **line: Any) -> None:
    """A curve averaged over seeds on ``ax``: the mean as a line, mean ± std (ddof 1; none where undefined) shaded."""
    import numpy as np

    mean = np.asarray(mean, dtype=float)
    spread = np.asarray([0.0 if s is None or not np.isfinite(s) else s for s in std], dtype=float)
    ax.plot(x, mean, color=color, label=label, **line)
    ax.fill_between(x, mean - spread, mean + spread, color=color, alpha=0.2)


def non_embedding_params(model_type: Any, config: Any) -> int | None:
    """Parameters of the model a stored config describes, without its embedding tables (token, position): the N of
    the 6·N·tokens training-FLOPs estimate. None when the model cannot be rebuilt here."""
    if not isinstance(model_type, str) or not isinstance(config, Mapping):
        return None
    try:
        with torch.device("meta"):
            model = from_config(config_from_dict(model_type, config), "hf")
    except (HFVarInitError, ValueError, TypeError, KeyError, AttributeError, ImportError, OSError):
        return None
    embeddings = {id(p) for entry, p, _ in iter_roles(model) if entry.role in EMBEDDING_ROLES}
    return sum(p.numel() for p in model.parameters() if id(p) not in embeddings)


def run_cost(metadata: Mapping[str, Any]) -> dict[str, int | None]:
    """What a recorded training run cost, from its statistics' metadata: ``steps`` (``final_step``, else ``steps``),
    ``tokens`` (steps x ``sequences_per_step`` x ``block_size``) and ``flops`` (6·N·tokens, N the parameters
    without the embedding tables, `non_embedding_params`); None where the run does not say."""
    def as_int(key: str) -> int | None:
        try:
            return int(metadata[key])
        except (KeyError, TypeError, ValueError):
            return None

    steps = as_int("final_step") if as_int("final_step") is not None else as_int("steps")
    per_step, block = as_int("sequences_per_step"), as_int("block_size")
    tokens = steps * per_step * block if None not in (steps, per_step, block) else None
    params = non_embedding_params(metadata.get("model_type"), metadata.get("config")) if tokens else None
    return {"steps": steps, "tokens": tokens, "flops": 6 * params * tokens if params else None}


def pilot_cost(spec: str) -> dict[str, Any]:
    """What the pilot behind an arm's rule cost, in training tokens and FLOPs: the training of the report it reads.

    A rule that reads no report, or a reference report bundled with the package, costs the user nothing. A report of
    one training run costs that run's tokens (`run_cost`); a
    report of several runs (``hf-varinit report RUN_A RUN_B``) the sum over the source runs it lists, read from
    their statistics (unknown when one cannot be read); a report of one set of weights (``report --from-model``)
    the tokens its checkpoint says it was trained on (``hf-varinit pretrain`` writes them into
    ``final/config.json``), else unknown.

    Args:
        spec (`str`): the arm's rule spec, e.g. ``optimal:report=R``.

    Returns:
        `dict`: ``report`` (the report's source, or None), ``tokens`` and ``flops`` (6·N·tokens per source run, N
        without the embedding tables; each None when unknown), and ``note`` (what they count).

    Raises:
        RuleError: the spec is not a valid rule; ReportError: the report cannot be loaded.
    """
    source = getattr(get_rule(spec), "report", None)
    if not isinstance(source, str):
        return {"report": None, "tokens": 0, "flops": 0, "note": "no pilot"}
    if bundled_report(source) is not None:
        return {"report": source, "tokens": 0, "flops": 0,
                "note": "a reference report bundled with the package: no pilot cost to the user"}
    report = VarianceReport.load(source)
    metadata = {**(report.stats.metadata if report.stats is not None else {}), **report.metadata}
    if report.is_snapshot:
        tokens = metadata.get("train_tokens")
        if isinstance(tokens, int) and not isinstance(tokens, bool):
            params = non_embedding_params(report.model_type, report.config)
            return {"report": source, "tokens": tokens, "flops": 6 * params * tokens if params else None,
                    "note": "the final weights of one training run"}
        return {"report": source, "tokens": None, "flops": None,
                "note": "from final weights: training cost unknown"}
    sources = getattr(getattr(report, "transfer", None), "sources", None)
    if sources:
        costs = [_source_cost(s) for s in sources]
        tokens, flops = ([c[key] for c in costs] for key in ("tokens", "flops"))
        return {"report": source, "tokens": None if None in tokens else int(sum(tokens)),
                "flops": None if None in flops else int(sum(flops)),
                "note": f"{len(sources)} source runs" + ("" if None not in tokens else ", not all readable")}
    cost = run_cost(metadata)
    return {"report": source, "tokens": cost["tokens"], "flops": cost["flops"],
            "note": "one source run" if cost["tokens"] is not None else "unknown"}


def _source_cost(source: str | Path) -> dict[str, int | None]:
    try:
        return run_cost(load_stats(source).metadata)
    except StatsError:
        return {"steps": None, "tokens": None, "flops": None}
