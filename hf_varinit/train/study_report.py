"""What the report of every init study shares: the card, the per-arm summary table, the figure (the pilot's cost
is `hf_varinit.report.cost`).

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
from typing import Any

from huggingface_hub import ModelCard, ModelCardData

from hf_varinit.report.tables import markdown_table
from hf_varinit.train.study_stats import pm

__all__ = ["figure", "seed_band", "study_card", "summary_table"]

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
