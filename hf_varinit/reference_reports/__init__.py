"""Reference variance reports that ship with the package, loadable by name from any install.

``optimal:report=gpt2-12l-tiny-qkv-dynamics`` and ``VarianceReport.load("gpt2-12l-tiny-qkv-dynamics")`` find the
folder ``hf_varinit/reference_reports/gpt2-12l-tiny-qkv-dynamics/`` (model card, ``steady_state.json`` and
``variance.safetensors``; the plots stay in the repository's ``model_cards/``). The reports of the bundled LM-study
recipes (configs ``gpt2-12l-lm-study``, ``llama-8l-lm-study``; each card names the run that made it):

* ``gpt2-12l-tiny-qkv-dynamics``: the demo's 12-layer GPT-2 (n_embd 128), 1500 steps;
* ``gpt2-12l-lm-study-w128``: the LM study's same-size pilot (12 layers, n_embd 128, 600 steps);
* ``gpt2-12l-lm-study-w64-w128``: proxies at n_embd 64 and 128 with the fitted width law, for
  ``width-transfer=fit`` to other widths;
* ``llama-8l-lm-study-h128``: the tiny Llama's pilot (8 layers, hidden 128, GQA, 600 steps);
* ``llama-8l-lm-study-h64-h128``: Llama proxies at hidden 64 (MLP 172) and 128 with the fitted width law.

A report name is resolved as: an existing path first, then a bundled report of that name, then a hub repo id.
"""

from __future__ import annotations

import os
from pathlib import Path

__all__ = ["FOLDER", "bundled_report", "bundled_reports"]

FOLDER = Path(__file__).resolve().parent


def bundled_reports() -> dict[str, Path]:
    """The reference reports inside the package, by name (their folder's name)."""
    return {p.name: p for p in sorted(FOLDER.iterdir()) if (p / "steady_state.json").is_file()}


def bundled_report(source: str | os.PathLike[str]) -> Path | None:
    """The bundled report folder named ``source``, or None when ``source`` is an existing path or not such a name.

    Args:
        source (`str` or `os.PathLike`): what a user passed as ``report=``.
    """
    if Path(source).exists():
        return None  # a path on disk always wins over a bundled name
    return bundled_reports().get(str(source).rstrip("/"))
