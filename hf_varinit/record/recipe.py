"""The training recipe of a recorded run, parsed once from the metadata of its ``variance.safetensors``.

V(W) is a property of the weights and of how they were trained (optimizer, learning rate and its schedule, weight
decay, batch size), so a report states the recipe it was measured under, the stationarity test needs the lr
schedule, and a rule that reads a report compares its run's optimizer and lr with the report's. `RunRecipe` is the
one reader of those metadata fields: every other module reads a `RunRecipe`, never the metadata keys.

**Unknown stays unknown.** A field the record does not give is None, printed ``unknown``; no default is guessed.
One fact about the past is not a guess: ``hf-varinit pretrain`` wrote ``lr_schedule`` only once it had a second
schedule, and before that its one schedule was cosine (a linear warmup, then cosine decay to 0 at ``max_steps``).
So a record of ``hf-varinit pretrain`` (``source == "training"`` with both ``warmup_steps`` and ``max_steps``)
without an ``lr_schedule`` key was cosine. Any other record without it (an MLP study, a ``VarianceCallback``) has
an unknown schedule. A record of one set of weights (``source == "checkpoint"``) does not say how they were trained:
every field is unknown.

Metadata fields read (each may be absent): ``optimizer``, ``lr`` (the peak lr), ``lr_schedule``,
``warmup_steps``, ``max_steps`` (the MLP studies write ``steps``), ``weight_decay``, ``momentum``, ``batch_size``.
A value of the wrong type (a string lr, a bool, a non-finite number) is unknown too.

Example:
    >>> recipe = RunRecipe.from_metadata({"source": "training", "optimizer": "sgd", "lr": 0.05, "steps": 1500})
    >>> recipe.lr_schedule is None, recipe.describe()
    (True, 'sgd, lr 0.05, lr schedule unknown')
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping
from typing import Any

__all__ = ["RunRecipe"]

UNKNOWN = "unknown"


def _number(value: Any) -> float | None:
    ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
    return float(value) if ok else None


def _count(value: Any) -> int | None:
    return value if type(value) is int and value >= 0 else None


def _text(value: Any) -> str | None:
    return value if isinstance(value, str) and value else None


@dataclasses.dataclass(frozen=True)
class RunRecipe:
    """How a recorded run was trained; every field None when the record does not say (unknown).

    Args:
        optimizer (`str`, *optional*): as the run named it (``adamw``, ``sgd``, a Trainer's ``adamw_torch``).
        lr (`float`, *optional*): the peak learning rate.
        lr_schedule (`str`, *optional*): after the warmup, ``cosine`` (decay to 0 at ``max_steps``) or ``constant``
            (the schedules of ``hf-varinit pretrain``), or what another trainer recorded.
        warmup_steps (`int`, *optional*): linear warmup steps from lr 0.
        max_steps (`int`, *optional*): the optimizer steps the run was set to take (the schedule's length).
        weight_decay (`float`, *optional*): AdamW's decoupled decay, or SGD's L2 term.
        momentum (`float`, *optional*): SGD momentum.
        batch_size (`int`, *optional*): sequences (or examples) per micro-batch, as the run recorded it.
    """

    optimizer: str | None = None
    lr: float | None = None
    lr_schedule: str | None = None
    warmup_steps: int | None = None
    max_steps: int | None = None
    weight_decay: float | None = None
    momentum: float | None = None
    batch_size: int | None = None

    @classmethod
    def from_metadata(cls, metadata: Mapping[str, Any]) -> RunRecipe:
        """The recipe a record's metadata gives (see the module docstring for the one inferred field).

        Args:
            metadata (`Mapping[str, Any]`): the decoded metadata of ``variance.safetensors`` (`VarianceStats.metadata`).
        """
        m = metadata
        if m.get("source") == "checkpoint":  # one set of weights: how they were trained is not recorded
            return cls()
        max_steps = _count(m["max_steps"]) if "max_steps" in m else _count(m.get("steps"))
        warmup = _count(m.get("warmup_steps"))
        schedule = _text(m.get("lr_schedule"))
        if ("lr_schedule" not in m and m.get("source") == "training" and warmup is not None
                and _count(m.get("max_steps")) is not None):
            schedule = "cosine"  # hf-varinit pretrain before --lr-schedule existed: cosine was its only schedule
        return cls(optimizer=_text(m.get("optimizer")), lr=_number(m.get("lr")), lr_schedule=schedule,
                   warmup_steps=warmup, max_steps=max_steps, weight_decay=_number(m.get("weight_decay")),
                   momentum=_number(m.get("momentum")), batch_size=_count(m.get("batch_size")))

    @classmethod
    def from_dict(cls, data: Mapping[str, Any] | None) -> RunRecipe:
        """The recipe as `to_dict` wrote it (the ``recipe`` of ``steady_state.json``; None: unknown).

        Fields are read as written, nothing inferred; fields it does not know are ignored (a newer writer may add
        some), and ``steady_state.json`` files of earlier versions (``optimizer``, ``lr``, ``lr_schedule``,
        ``warmup_steps`` only) load with the other fields unknown.
        """
        if not data:
            return cls()
        return cls(optimizer=_text(data.get("optimizer")), lr=_number(data.get("lr")),
                   lr_schedule=_text(data.get("lr_schedule")), warmup_steps=_count(data.get("warmup_steps")),
                   max_steps=_count(data.get("max_steps")), weight_decay=_number(data.get("weight_decay")),
                   momentum=_number(data.get("momentum")), batch_size=_count(data.get("batch_size")))

    def to_dict(self) -> dict[str, Any] | None:
        """Every field (None: unknown) as JSON-ready values; None when nothing is known (a snapshot)."""
        return dataclasses.asdict(self) if self.known else None

    @property
    def known(self) -> bool:
        """Whether the record gives any field of the recipe."""
        return any(getattr(self, f.name) is not None for f in dataclasses.fields(self))

    def differences(self, other: RunRecipe) -> list[tuple[str, Any, Any]]:
        """``(field, mine, theirs)`` for each training field both recipes know and that differs (unknown: no claim).

        The batch size and the run's length are not compared: runs of one recipe may differ in how long they ran.
        """
        compared = ("optimizer", "lr", "lr_schedule", "warmup_steps", "weight_decay", "momentum")
        return [(name, getattr(self, name), getattr(other, name)) for name in compared
                if None not in (getattr(self, name), getattr(other, name))
                and getattr(self, name) != getattr(other, name)]

    def schedule_text(self) -> str:
        """The lr schedule in words: ``30 warmup steps, then cosine decay to 0 at step 1500`` (or what is known)."""
        if self.lr_schedule is None:
            return UNKNOWN
        end = f"step {self.max_steps}" if self.max_steps is not None else "the end (max_steps unknown)"
        after = {"cosine": f"cosine decay to 0 at {end}", "constant": f"constant to {end}"}.get(
            self.lr_schedule, f"{self.lr_schedule} to {end}")
        warmup = (f"{self.warmup_steps} warmup steps" if self.warmup_steps is not None
                  else "warmup steps unknown")
        return f"{warmup}, then {after}"

    def describe(self) -> str:
        """One line: ``adamw, lr 0.001, cosine schedule, 10 warmup steps, weight decay 0`` (unknown fields said so)."""
        if not self.known:
            return "training recipe unknown"
        parts = [self.optimizer or "optimizer unknown", f"lr {_shown(self.lr)}",
                 f"{self.lr_schedule} schedule" if self.lr_schedule else "lr schedule unknown"]
        if self.warmup_steps is not None:
            parts.append(f"{self.warmup_steps} warmup steps")
        if self.weight_decay is not None:
            parts.append(f"weight decay {self.weight_decay:g}")
        return ", ".join(parts)


def _shown(value: Any) -> str:
    return UNKNOWN if value is None else str(value)
