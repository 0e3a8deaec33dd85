"""The ``layers.{i}.{role}`` keys of tracked tensors: the one place that writes them (`layer_key`) and reads them
(`parse_layer_key`) for statistics, reports and init plans, and `shape_differences` of two models' tracked tensor
shapes (what a variance report must match).
"""

from __future__ import annotations

import re
from collections.abc import Mapping

__all__ = ["Shapes", "layer_key", "parse_layer_key", "shape_differences"]

_LAYER_KEY = re.compile(r"^layers\.(\d+)\.(.+)$")

Shapes = Mapping[str, tuple[int, ...]]


def layer_key(layer: int | None, role: str) -> str:
    """The key of ``role`` in block ``layer`` (``layers.3.q``); a tensor outside the blocks is keyed by its role."""
    return role if layer is None else f"layers.{layer}.{role}"


def parse_layer_key(key: str) -> tuple[int | None, str]:
    """``(layer, role)`` of a key written by `layer_key`; ``(None, key)`` for keys outside the blocks.

    Example:
        >>> parse_layer_key("layers.3.q"), parse_layer_key("embedding")
        ((3, 'q'), (None, 'embedding'))
    """
    match = _LAYER_KEY.match(key)
    return (int(match.group(1)), match.group(2)) if match else (None, key)


def shape_differences(theirs: Shapes, mine: Shapes) -> list[tuple[str, tuple[int, ...], tuple[int, ...]]]:
    """``(key, their shape, my shape)`` for every tracked tensor whose shape differs, in ``theirs``' order.

    ``theirs`` / ``mine`` map tracked keys (``layers.0.q``, ``embedding``) to shapes. Keys one side lacks are not
    compared. At different depths a block tensor is compared with the same role's tensors at any depth of the other
    model, so depth alone is never a shape difference.

    Example:
        >>> shape_differences({"embedding": (1000, 64)}, {"embedding": (500, 64), "layers.0.q": (64, 64)})
        [('embedding', (1000, 64), (500, 64))]
    """
    same_depth = ({parse_layer_key(k)[0] for k in theirs} - {None}) == ({parse_layer_key(k)[0] for k in mine} - {None})
    roles: dict[str, list[tuple[int, ...]]] = {}  # role -> my shapes at any depth
    for key, shape in mine.items():
        roles.setdefault(parse_layer_key(key)[1], []).append(tuple(shape))
    out = []
    for key, shape in theirs.items():
        (layer, role), shape = parse_layer_key(key), tuple(shape)
        if key in mine and (same_depth or layer is None) and shape != tuple(mine[key]):
            out.append((key, shape, tuple(mine[key])))
        elif layer is not None and not same_depth and role in roles and shape not in roles[role]:
            out.append((key, shape, tuple(mine.get(key, roles[role][0]))))
    return out
