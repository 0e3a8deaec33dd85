"""`hf-varinit report`: a variance report from a run's statistics or from a trained checkpoint.

    hf-varinit report runs/k --output model_cards/gpt2-12l-tiny-kaiming [--push-to-hub me/gpt2-variance]
    hf-varinit report --from-model gpt2 --output model_cards/gpt2-weights
    hf-varinit report runs/k --output model_cards/gpt2-12l-tiny-kaiming --overwrite   # replace an existing report
    hf-varinit report runs/w64 runs/w128 runs/d6 --output runs/gpt2-transfer   # several widths / depths: a fit

Several runs (of one model type and recipe, differing only in width and depth) make one report: the widest, then
deepest, run's V(W), plus V(W) = c * fan_in^-alpha per tensor fitted over the widths (``width-transfer=fit``).

The analysis flags (``--window-fraction``, ``--drift-tol``, ...) are the fields of `AnalysisOptions`, one flag per
field, with the field's help text and default.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
from pathlib import Path
from typing import Any

from hf_varinit.errors import ConfigError, ReportError, StatsError
from hf_varinit.io_utils import blocking_file, check_overwrite
from hf_varinit.report.options import DEFAULT_LICENSE, AnalysisOptions

# torch, transformers and the report machinery are imported in the functions that use them, so `--help` is fast

__all__ = ["add_arguments", "main_multi_report", "main_report", "run"]


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("run", nargs="*", help="a run folder (holding variance.safetensors) or the file itself; "
                        "several runs at other widths / depths make a multi-run report with a width fit")
    parser.add_argument("--from-model", metavar="PATH_OR_ID",
                        help="report the final weights of a save_pretrained folder or hub id instead of a run")
    parser.add_argument("--output", help="report folder (default: <run>/report, or runs/<name>-weights)")
    parser.add_argument("--push-to-hub", metavar="REPO_ID", help="also upload the report folder to this hub repo")
    parser.add_argument("--overwrite", action="store_true",
                        help="replace an existing report folder whole (default: refuse, and write nothing)")
    parser.add_argument("--license", default=None,
                        help=f"the card's license, a hub license id (default: the run's, else {DEFAULT_LICENSE})")
    group = parser.add_argument_group("steady-state analysis (AnalysisOptions)")
    for f in dataclasses.fields(AnalysisOptions):
        group.add_argument(f"--{f.name.replace('_', '-')}", dest=f.name, type=type(f.default), default=f.default,
                           help=f"{f.metadata['help']} (default {f.default})")


def _analysis_options(args: argparse.Namespace) -> AnalysisOptions:
    return AnalysisOptions(**{f.name: getattr(args, f.name) for f in dataclasses.fields(AnalysisOptions)})


def _default_output(args: argparse.Namespace) -> Path:
    if args.from_model:
        return Path("runs") / f"{Path(str(args.from_model).rstrip('/')).name}-weights"
    run = Path(args.run[0])
    return (run.parent if run.is_file() else run) / "report"


def main_report(
    stats: Any, output: str | os.PathLike[str], push_to_hub: str | None = None,
    options: AnalysisOptions | None = None, *, overwrite: bool = False, license: str | None = None,
) -> Path:
    """Analyse ``stats``, write the report folder ``output``, optionally push it; prints what was written.

    Args:
        stats (`VarianceStats`, `str` or `os.PathLike`): a record, or a run folder / ``variance.safetensors``.
        output (`str` or `os.PathLike`): the report folder.
        push_to_hub (`str`, *optional*): a hub repo id to upload the folder to (the card then points at it).
        options (`AnalysisOptions`, *optional*): the steady-state tolerances.
        overwrite (`bool`): replace an existing report folder ``output`` whole.
        license (`str`, *optional*): the card's license (default: the run's, else apache-2.0).

    Raises:
        ReportError: unreadable statistics, an existing ``output`` without ``overwrite`` (nothing is written), or a
            failed push (after the folder is written; the message says where).
    """
    from hf_varinit.report.report import VarianceReport

    check_overwrite(output, overwrite)
    try:
        report = VarianceReport.from_stats(stats, options, license=license)
    except StatsError as exc:
        raise ReportError(f"cannot build a report: {exc}") from exc
    folder = report.save(output, reference=push_to_hub, overwrite=overwrite)
    print(f"variance report written to {folder}/")
    for f in sorted(folder.iterdir()):
        print(f"  {f.name}")
    if report.nonstationary_keys:
        keys = report.nonstationary_keys
        print(f"not stationary ({len(keys)}): {', '.join(keys)}")
    if push_to_hub:
        url = report.push_to_hub(push_to_hub, _folder=folder)
        print(f"pushed to {url}")
    return folder


def main_multi_report(runs: list[str], output: str | os.PathLike[str], options: AnalysisOptions | None = None, *,
                      overwrite: bool = False, license: str | None = None) -> Path:
    """One report from several runs at other widths / depths (`combine_reports`); prints the fit per role."""
    from hf_varinit.report.multi_run import combine_reports
    from hf_varinit.report.report import VarianceReport

    check_overwrite(output, overwrite)
    try:
        reports = [VarianceReport.from_stats(r, options, license=license) for r in runs]
    except StatsError as exc:
        raise ReportError(f"cannot build a report: {exc}") from exc
    for r, source in zip(reports, runs):
        r.origin = str(source)
    report = combine_reports(reports)
    folder = report.save(output, overwrite=overwrite)
    fit = report.transfer
    print(f"multi-run report written to {folder}/ (V(W) table of {report.origin}; widths {fit.widths}, depths "
          f"{fit.depths})")
    for key, f in fit.fits.items():
        print(f"  {key}: alpha={f.alpha:.3g} c={f.c:.4g} max |log residual|={max(map(abs, f.residuals)):.3g}")
    if not fit.fits:
        print("  one width: no width fit (the runs map by relative depth)")
    return folder


def run(args: argparse.Namespace) -> Path:
    if bool(args.run) == bool(args.from_model):
        raise ConfigError("give either a run folder / statistics file, or --from-model PATH_OR_ID (not both)")
    if args.output and (blocker := blocking_file(args.output)) is not None:  # checked before any work
        raise ConfigError(f"--output {args.output}: {blocker} is a file, so no folder can be made inside it; "
                          "choose an --output path under a folder")
    if len(args.run) > 1:
        if not args.output or args.push_to_hub:
            raise ConfigError("a multi-run report needs --output DIR (and is pushed later with `hf upload`)")
        return main_multi_report(args.run, args.output, _analysis_options(args), overwrite=args.overwrite,
                                 license=args.license)
    from hf_varinit.record.from_checkpoint import stats_from_checkpoint

    output = args.output or _default_output(args)
    check_overwrite(output, args.overwrite)  # before reading a checkpoint
    source = stats_from_checkpoint(args.from_model) if args.from_model else args.run[0]
    return main_report(source, output, args.push_to_hub, _analysis_options(args), overwrite=args.overwrite,
                       license=args.license)
