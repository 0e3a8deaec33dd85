"""`AnalysisOptions`: the tolerances of the steady-state analysis (a light module: the CLI builds its flags here)."""

from __future__ import annotations

import dataclasses
from typing import Any

from hf_varinit.errors import ReportError
from hf_varinit.record import STAT_NAMES

__all__ = ["DEFAULT_LICENSE", "AnalysisOptions"]

DEFAULT_LICENSE = "apache-2.0"  # the package's own license, for reports that do not name theirs


@dataclasses.dataclass(frozen=True)
class AnalysisOptions:
    """Tolerances of the steady-state analysis (definitions in `hf_varinit.report.steady_state`)."""

    window_fraction: float = dataclasses.field(
        default=0.25, metadata={"help": "trailing window as a fraction of the records"})
    min_window: int = dataclasses.field(
        default=5, metadata={"help": "fewest records in the window; fewer records in all = not stationary"})
    drift_tol: float = dataclasses.field(
        default=0.05, metadata={"help": "largest relative drift of the fitted trend across the window"})
    band: float = dataclasses.field(
        default=0.10, metadata={"help": "relative band around the steady value for equilibration"})
    stat: str = dataclasses.field(
        default="second_moment", metadata={"help": "statistic giving V(W): second_moment, var or mean"})
    min_lr_fraction: float = dataclasses.field(
        default=0.1, metadata={"help": "stationary only if the trailing window's mean lr is at least this fraction "
                               "of the peak lr (records that give their lr schedule; 0 turns the check off)"})

    def __post_init__(self) -> None:
        checks = [
            (isinstance(self.window_fraction, (int, float)) and 0 < self.window_fraction <= 1,
             "window_fraction", "a number in (0, 1]"),
            (type(self.min_window) is int and self.min_window >= 2, "min_window", "an integer >= 2"),
            (isinstance(self.drift_tol, (int, float)) and self.drift_tol > 0, "drift_tol", "a number > 0"),
            (isinstance(self.band, (int, float)) and self.band > 0, "band", "a number > 0"),
            (self.stat in STAT_NAMES, "stat", f"one of {list(STAT_NAMES)}"),
            (isinstance(self.min_lr_fraction, (int, float)) and 0 <= self.min_lr_fraction <= 1,
             "min_lr_fraction", "a number in [0, 1]"),
        ]
        for ok, name, valid in checks:
            if not ok:
                raise ReportError(f"AnalysisOptions.{name}={getattr(self, name)!r} is invalid; use {valid}")

    @classmethod
    def from_dict(cls, data: Any) -> AnalysisOptions:
        if not isinstance(data, dict):
            raise ReportError(f"analysis options must be a JSON object, got {type(data).__name__}")
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - names)
        if unknown:
            raise ReportError(f"unknown analysis option(s) {unknown}; valid: {sorted(names)}")
        return cls(**data)
