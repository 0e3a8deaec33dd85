"""A multi-run report: runs of one model family at several widths and depths, combined into one report whose
`VarianceReport.transfer` holds the runs and the width fit that ``width-transfer=fit`` reads."""

from __future__ import annotations

from hf_varinit.arch.config import hidden_size
from hf_varinit.errors import ReportError
from hf_varinit.init.compatibility import table_fans
from hf_varinit.report.cost import report_run_cost
from hf_varinit.report.report import VarianceReport
from hf_varinit.report.transfer import check_combinable, fit_runs

__all__ = ["combine_reports"]


def combine_reports(reports: list[VarianceReport]) -> VarianceReport:
    """One report from runs of one model type at several widths and/or depths: the widest (then deepest) run's
    report, with `VarianceReport.transfer` holding the runs and, with >= 2 widths, V(W) = c * fan_in^-alpha per key.

    Raises:
        ReportError: fewer than two runs, another model type or config entry than width / depth, another recipe.
    """
    if len(reports) < 2:
        raise ReportError("a multi-run report needs >= 2 runs; for one run use `hf-varinit report RUN`")
    runs = []
    for r in reports:
        fans = table_fans(r.variance_table())
        if fans is None:
            raise ReportError(f"{r.source_description}: its model cannot be rebuilt from the stored config, so the "
                              "fans of its tensors are unknown")
        runs.append({"source": r.origin or "in-memory report", "model_type": r.model_type, "config": r.config,
                     "recipe": r.recipe, "width": hidden_size(r.config) or 0, "n_layer": r.n_layer,
                     "variances": r.variances(), "fans": fans})
    check_combinable(runs)
    base = max(range(len(runs)), key=lambda i: (runs[i]["width"], runs[i]["n_layer"] or 0))
    fit = fit_runs(runs)
    # kept: the runs may not travel with the report
    fit.source_costs = [{key: cost[key] for key in ("tokens", "flops")} for cost in map(report_run_cost, reports)]
    reports[base].transfer = fit
    return reports[base]

