"""What a pretraining run prints: a quiet console while it runs, and a rounded summary at the end.

`quiet_console` silences, for the run's duration only, two known third-party messages that say nothing to act
on (a logging filter on the one logger that emits each, matching the message), and turns the progress bars of
`datasets` and `transformers` off with ``--disable-tqdm`` or ``TQDM_DISABLE=1``:

- transformers: ``loss_type=None was set in the config but it is unrecognized`` (GPT-2's class name has no
  loss-type suffix; the default causal-LM loss is the right one);
- accelerate ``save_state``: ``Removed shared tensor {'lm_head.weight'} while saving`` (GPT-2 ties ``lm_head``
  to ``wte``; the reload restores the tie), once per checkpoint, inside the progress bar.
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
from collections.abc import Iterator
from pathlib import Path

import datasets
from transformers.utils import logging as hf_logging

from hf_varinit.arch.keys import layer_key
from hf_varinit.record.recorder import VarianceRecorder

# logger name -> the message it emits that is silenced while a run is going
KNOWN_NOISE: dict[str, re.Pattern] = {
    "transformers.modeling_utils": re.compile(r"`loss_type=None` was set in the config but it is unrecognized"),
    "accelerate.utils.other": re.compile(r"Removed shared tensor .* while saving"),
}
_FALSE_WORDS = ("", "0", "false", "no", "off")


class _DropMessage(logging.Filter):
    def __init__(self, pattern: re.Pattern):
        super().__init__()
        self.pattern = pattern

    def filter(self, record: logging.LogRecord) -> bool:
        return not self.pattern.search(record.getMessage())


def tqdm_disabled_by_env() -> bool:
    """Whether ``TQDM_DISABLE`` asks for no progress bars (tqdm's own environment variable)."""
    return os.environ.get("TQDM_DISABLE", "").strip().lower() not in _FALSE_WORDS


@contextlib.contextmanager
def quiet_console(disable_progress_bars: bool = False) -> Iterator[None]:
    """Silence `KNOWN_NOISE` (and, if asked, the libraries' progress bars) inside the block; restore after."""
    filters = []
    for name, pattern in KNOWN_NOISE.items():
        logger, drop = logging.getLogger(name), _DropMessage(pattern)
        logger.addFilter(drop)
        filters.append((logger, drop))
    bars_were = (datasets.is_progress_bar_enabled(), hf_logging.is_progress_bar_enabled())
    if disable_progress_bars:
        datasets.disable_progress_bars()
        hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        for logger, drop in filters:
            logger.removeFilter(drop)
        if disable_progress_bars:
            if bars_were[0]:
                datasets.enable_progress_bars()
            if bars_were[1]:
                hf_logging.enable_progress_bar()


# ----------------------------------------------------------------------------- the summary


def _number(value: float | None, digits: int = 4) -> str:
    return "n/a" if value is None else f"{value:.{digits}g}"


def print_summary(recorder: VarianceRecorder, result, checkpoints: Path | None) -> None:
    """Per layer Q/K/V variance at the first and last record, the run's numbers rounded, and where every file is.

    Args:
        result (`TrainResult`): the finished run.
        checkpoints (`Path`, *optional*): the checkpoints folder, when this run wrote a checkpoint.
    """
    arrays, keys = recorder.arrays(), recorder.keys
    steps = arrays["step"]
    print(f"\nQ/K/V weight variance, step {steps[0]} -> step {steps[-1]}")
    print(f"{'layer':>5}  " + "  ".join(f"{r + ' init':>10} {r + ' end':>10}" for r in ("q", "k", "v")))
    for layer in range(recorder.metadata()["n_layer"] or 0):
        cells = []
        for role in ("q", "k", "v"):
            key = layer_key(layer, role)
            if key in keys:
                j = keys.index(key)
                cells.append(f"{arrays['var'][0, j]:>10.3e} {arrays['var'][-1, j]:>10.3e}")
        if cells:
            print(f"{layer:>5}  " + "  ".join(cells))
    ppl = f" (ppl {result.eval_ppl:.1f})" if result.eval_ppl is not None else ""
    print(f"\nstep {result.step}, {result.tokens:,} tokens, eval loss {_number(result.eval_loss)}{ppl}, "
          f"{result.wall_s:.1f} s")
    if getattr(result, "compile_s", None) is not None:
        print(f"compile      {result.compile_s:.1f} s (the first step; tokens/s leave it out)")
    print(f"statistics   {result.stats_path}\nmetrics      {result.metrics_path}\nfinal model  {result.final_dir}")
    if checkpoints is not None:
        print(f"checkpoints  {checkpoints}")
