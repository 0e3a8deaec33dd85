"""`hf-varinit report`: a variance report from a run's statistics or from a trained checkpoint."""

from __future__ import annotations

import argparse
import dataclasses
from pathlib import Path

from hf_varinit.errors import ConfigError
from hf_varinit.report.report import main_report
from hf_varinit.report.steady_state import AnalysisOptions


def add_report_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("run", nargs="?", help="a run folder (holding variance.safetensors) or the file itself")
    parser.add_argument("--from-model", metavar="PATH_OR_ID",
                        help="report the final weights of a save_pretrained folder or hub id instead of a run")
    parser.add_argument("--output", help="report folder (default: <run>/report, or model_cards/<name>-weights)")
    parser.add_argument("--push-to-hub", metavar="REPO_ID", help="also upload the report folder to this hub repo")
    for f in dataclasses.fields(AnalysisOptions):
        parser.add_argument(f"--{f.name.replace('_', '-')}", type=type(f.default), default=f.default,
                            help=f"{f.metadata.get('help', '')} (default {f.default})")


def _default_output(args: argparse.Namespace) -> Path:
    if args.from_model:
        return Path("model_cards") / f"{Path(str(args.from_model).rstrip('/')).name}-weights"
    run = Path(args.run)
    return (run.parent if run.is_file() else run) / "report"


def run_report(args: argparse.Namespace) -> Path:
    if bool(args.run) == bool(args.from_model):
        raise ConfigError("give either a run folder / statistics file, or --from-model PATH_OR_ID (not both)")
    options = AnalysisOptions(**{f.name: getattr(args, f.name) for f in dataclasses.fields(AnalysisOptions)})
    if args.from_model:
        from hf_varinit.record.from_checkpoint import stats_from_checkpoint

        source = stats_from_checkpoint(args.from_model)
    else:
        source = args.run
    return main_report(source, args.output or _default_output(args), args.push_to_hub, options)
