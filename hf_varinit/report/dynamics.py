"""Depth dynamics of Q/K/V variance by the library's one settling definition: the equilibration step.

The **equilibration step** of a tensor (DESIGN.md "Definitions"; computed by `steady_state.analyze_series`) is the
first recorded step after which its variance stays within ±``band`` (relative) of its steady-state value through
the end of the record. It is None when the tensor has no steady-state value (not stationary, so not judged
equilibrated) or ends outside the band. `depth_dynamics` lays it out per layer and per Q, K, V, as data; the card
renders it (`hf_varinit.report.card`) and ``equilibration.png`` plots it.

The exploratory statistics of the depth trend (half-change step, amplitude-normalised settle step, early growth,
Spearman tests over layers and the interval over seeds) are research: they live in the lab
(``experiments/hf_varinit_lab/dynamics_trends.py``, across seeds ``scripts/dynamics_seeds.py``).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

from hf_varinit.report.steady_state import KeyAnalysis

__all__ = ["QKV", "DepthDynamics", "LayerEquilibration", "depth_dynamics"]

QKV = ("q", "k", "v")


@dataclass(frozen=True)
class LayerEquilibration:
    """The equilibration step of each of a layer's roles (None: none, see the module docstring)."""

    layer: int
    steps: dict[str, int | None]

    @property
    def latest(self) -> int | None:
        """The layer's equilibration step: the latest of its roles' (None if any has none)."""
        values = list(self.steps.values())
        return None if not values or any(s is None for s in values) else max(values)  # type: ignore[type-var]


@dataclass(frozen=True)
class DepthDynamics:
    """Per layer (shallow to deep), the equilibration step of each role in ``roles``.

    Attributes:
        layers (`tuple[LayerEquilibration, ...]`): one per layer with a tracked role, by layer index.
        roles (`tuple[str, ...]`): the roles laid out (Q, K, V of a transformer).
        band (`float`): the relative band of the definition.
        window (`tuple[int, int]` or `None`): the trailing window the steady-state values come from.
    """

    layers: tuple[LayerEquilibration, ...]
    roles: tuple[str, ...]
    band: float
    window: tuple[int, int] | None = None

    @property
    def equilibrated(self) -> int:
        """How many of the tensors have an equilibration step."""
        return sum(s is not None for d in self.layers for s in d.steps.values())

    @property
    def tensors(self) -> int:
        return sum(len(d.steps) for d in self.layers)

    def to_dict(self) -> dict:
        return {**asdict(self), "equilibrated": self.equilibrated, "tensors": self.tensors}


def depth_dynamics(tensors: dict[str, KeyAnalysis], roles: tuple[str, ...] = QKV) -> DepthDynamics | None:
    """The equilibration step per layer and role, from the steady-state analysis; None when no tensor of ``roles``
    sits in a layer (an MLP's ``linear`` layers, a snapshot's tensors are not judged either: pass no roles of theirs).

    Args:
        tensors (`dict[str, KeyAnalysis]`): the analysis per tracked key (`steady_state.analyze`).
        roles (`tuple[str, ...]`): the roles to lay out (default Q, K and V).
    """
    per: dict[int, dict[str, int | None]] = {}
    band, window = None, None
    for a in tensors.values():
        if a.layer is not None and a.role in roles:
            per.setdefault(a.layer, {})[a.role] = a.equilibration_step
            band, window = a.band, window or a.window
    if not per:
        return None
    layers = tuple(LayerEquilibration(layer, {r: steps[r] for r in roles if r in steps})
                   for layer, steps in sorted(per.items()))
    return DepthDynamics(layers, tuple(r for r in roles if any(r in d.steps for d in layers)), band, window)
