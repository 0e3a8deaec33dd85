"""The one markdown table renderer of the package's cards: rows or a DataFrame -> a GitHub (pipe) table via pandas.

Example:
    >>> print(markdown_table([{"layer": 0, "V(W)": 0.004}], headers=["layer", "V(W) Q"]))
    | layer | V(W) Q |
    |---------|----------|
    | 0 | 0.004 |
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import pandas as pd

from hf_varinit.errors import ReportError

__all__ = ["format_cell", "markdown_table"]


def format_cell(x: Any, digits: int = 4) -> str:
    """A table cell: floats with ``digits`` significant digits, None as an em dash, booleans as yes / no.

    Text is kept on one line and its ``|`` escaped, so a cell never breaks the table.
    """
    if x is None:
        return "—"
    if isinstance(x, bool):
        return "yes" if x else "no"
    if isinstance(x, float):
        return f"{x:.{digits}g}" if math.isfinite(x) else str(x)
    return str(x).replace("|", "\\|").replace("\n", " ")


def markdown_table(
    data: pd.DataFrame | Sequence[Mapping[str, Any]], columns: Sequence[str] | None = None,
    headers: Sequence[str] | None = None, *, cell: Callable[[Any], str] = format_cell,
) -> str:
    """A GitHub markdown table, rendered by `pandas.DataFrame.to_markdown` (cells are not padded).

    Args:
        data (`pandas.DataFrame` or a sequence of `dict`): the rows; a missing key is an empty (``—``) cell.
        columns (`Sequence[str]`, *optional*): the columns to show, in order (default: all of them).
        headers (`Sequence[str]`, *optional*): the header of each shown column (default: the column names).
        cell (`Callable[[Any], str]`): formats each value (default `format_cell`).

    Returns:
        `str`: the table, without a trailing newline.
    """
    if isinstance(data, pd.DataFrame):
        columns = list(data.columns if columns is None else columns)
        records = data[columns].to_dict("records")
    else:
        records = [dict(row) for row in data]
        columns = list(columns if columns is not None else dict.fromkeys(k for row in records for k in row))
    head = list(headers if headers is not None else columns)
    if len(head) != len(columns):
        raise ReportError(f"markdown_table: {len(head)} headers {head} for {len(columns)} columns {columns}; "
                          "give one header per column")
    body = pd.DataFrame([[cell(row.get(c)) for c in columns] for row in records], columns=range(len(head)))
    return body.to_markdown(index=False, headers=head, tablefmt="pipe", stralign=None, numalign=None,
                            disable_numparse=True)
