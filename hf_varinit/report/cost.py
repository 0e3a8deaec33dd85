"""What training cost: a run's tokens and FLOPs from its statistics, and the pilot behind a rule's report.

FLOPs are 6·N·tokens, N the parameters without the token and position embedding tables (`non_embedding_params`).
A multi-run report keeps its source runs' costs (``transfer.source_costs``, written by `combine_reports`), so what its
proxies cost is known where the runs are not on disk.

Example:
    >>> pilot_cost("optimal:report=gpt2-12l-lm-study-w64-w128")["tokens"]  # bundled: no cost to the user
    0
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from hf_varinit.arch.builder import config_from_dict
from hf_varinit.errors import HFVarInitError, StatsError
from hf_varinit.init.patch import from_config
from hf_varinit.init.roles import EMBEDDING_ROLES, iter_roles
from hf_varinit.init.rules import get_rule
from hf_varinit.record.stats_file import load_stats
from hf_varinit.reference_reports import bundled_report
from hf_varinit.report.report import VarianceReport

__all__ = ["non_embedding_params", "pilot_cost", "report_run_cost", "run_cost"]


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


def _run_metadata(report: VarianceReport) -> dict[str, Any]:
    """The report's metadata over its statistics' (the run that made it)."""
    return {**(report.stats.metadata if report.stats is not None else {}), **report.metadata}


def report_run_cost(report: VarianceReport) -> dict[str, int | None]:
    """What the training run behind a report of one run cost: `run_cost` of its metadata."""
    return run_cost(_run_metadata(report))


def pilot_cost(spec: str) -> dict[str, Any]:
    """What the pilot behind an arm's rule cost, in training tokens and FLOPs: the training of the report it reads.

    A rule that reads no report, or a reference report bundled with the package, costs the user nothing. A report of
    one training run costs that run's tokens (`run_cost`); a report of several runs (``hf-varinit report RUN_A
    RUN_B``) the sum over the source runs it lists, read from their statistics, else the costs the report kept of
    them (unknown when neither says); a report of one set of weights (``report --from-model``) the tokens its
    checkpoint says it was trained on (``hf-varinit pretrain`` writes them into ``final/config.json``), else unknown.

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
    if report.is_snapshot:
        tokens = _run_metadata(report).get("train_tokens")
        if isinstance(tokens, int) and not isinstance(tokens, bool):
            params = non_embedding_params(report.model_type, report.config)
            return {"report": source, "tokens": tokens, "flops": 6 * params * tokens if params else None,
                    "note": "the final weights of one training run"}
        return {"report": source, "tokens": None, "flops": None,
                "note": "from final weights: training cost unknown"}
    transfer = getattr(report, "transfer", None)
    sources = getattr(transfer, "sources", None)
    if sources:
        stored = list(transfer.source_costs) + [{}] * (len(sources) - len(transfer.source_costs))
        costs = [_source_cost(s, kept) for s, kept in zip(sources, stored)]
        tokens, flops = ([c[key] for c in costs] for key in ("tokens", "flops"))
        return {"report": source, "tokens": None if None in tokens else int(sum(tokens)),
                "flops": None if None in flops else int(sum(flops)),
                "note": f"{len(sources)} source runs" + ("" if None not in tokens else ", not all readable")}
    cost = report_run_cost(report)
    return {"report": source, "tokens": cost["tokens"], "flops": cost["flops"],
            "note": "one source run" if cost["tokens"] is not None else "unknown"}


def _source_cost(source: str | Path, kept: Mapping[str, Any]) -> dict[str, int | None]:
    """A source run's cost, read from its statistics; where they are not on disk, the cost the report kept."""
    try:
        return run_cost(load_stats(source).metadata)
    except StatsError:
        return {"steps": None, "tokens": kept.get("tokens"), "flops": kept.get("flops")}
