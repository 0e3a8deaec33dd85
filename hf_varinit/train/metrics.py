"""The run's metrics: ``metrics.jsonl``, written by an Accelerate tracker, and the throughput between log lines.

`MetricsFile` is one more tracker next to TensorBoard / Trackio / W&B, so one ``accelerator.log(values, step=)``
call writes every metrics line everywhere. The file is strict JSON, one object a line: NaN and infinity are
written as null, and every line has the same leading keys (``step``, then `MetricsFile.COLUMNS`). The per-layer
variances sent to the other trackers (``variance/...``) are left out: ``variance.safetensors`` holds them all.
"""

from __future__ import annotations

import json
import math
import os
import time
from pathlib import Path
from typing import Any

from accelerate.tracking import GeneralTracker

from hf_varinit.io_utils import atomic_write_text


def finite_or_none(value: Any) -> Any:
    """None for a NaN or infinite float (strict JSON has neither), else ``value``."""
    return None if isinstance(value, float) and not math.isfinite(value) else value


def _parsed(line: str) -> dict | None:
    """A metrics line as a dict; None for a blank line or one a killed run or a full disk left half-written."""
    try:
        row = json.loads(line)
    except ValueError:
        return None
    return row if isinstance(row, dict) else None


class MetricsFile(GeneralTracker):
    """An Accelerate tracker appending each logged dict to a JSON-lines file (main process only).

    Args:
        path (`str` or `os.PathLike`): the ``metrics.jsonl`` file.
    """

    name = "metrics_jsonl"
    requires_logging_directory = False
    main_process_only = True
    LEFT_OUT = "variance/"  # keys for the other trackers only
    COLUMNS = ("loss", "lr", "grad_norm", "tokens", "tokens_per_s", "nonfinite_skips", "scaler_skips")

    def __init__(self, path: str | os.PathLike):
        super().__init__()
        self.path = Path(path)

    @property
    def tracker(self) -> Path:
        return self.path

    def restart(self, step: int) -> None:
        """Keep only the lines up to ``step``: none for a new run, those before its checkpoint for a resumed one.

        A line cut short (the run was killed, or the disk filled, while writing it) is dropped, not an error.
        """
        if not self.path.is_file():
            return
        if step == 0:
            self.path.unlink()
            return
        kept = [line for line in self.path.read_text(encoding="utf-8", errors="replace").splitlines()
                if (row := _parsed(line)) is not None and (row.get("step") or 0) <= step]
        atomic_write_text(self.path, "".join(line + "\n" for line in kept))

    def log(self, values: dict[str, Any], step: int | None = None, **kwargs) -> None:
        values = {k: v for k, v in values.items() if not k.startswith(self.LEFT_OUT)}
        if not values:
            return
        row = {"step": step, **dict.fromkeys(self.COLUMNS), **values}
        with self.path.open("a", encoding="utf-8") as fh:
            fh.write(json.dumps({k: finite_or_none(v) for k, v in row.items()}) + "\n")


class Throughput:
    """Tokens per second since the last `rate` call."""

    def __init__(self):
        self.tokens, self.since = 0, time.perf_counter()

    def add(self, tokens: int) -> None:
        self.tokens += tokens

    def rate(self) -> float:
        now = time.perf_counter()
        rate = self.tokens / max(now - self.since, 1e-9)
        self.tokens, self.since = 0, now
        return rate
