"""The MLP's entry in the library's architecture table (`hf_varinit.arch.table`), found through the lab's
``hf_varinit.architectures`` entry point ``varinit_mlp = "hf_varinit_lab.arch:VARINIT_MLP"`` when a model of that
type is first asked for (`hf_varinit.arch.table.get_architecture`).

The MLP's hidden layers are plain ``linear`` tensors; only its ``classifier`` has a role of its own (``head``).
`build_config` builds it from ``n_layer`` hidden layers of width ``n_embd`` (`build_mlp_config`), and
``input_size``, ``num_labels`` and ``hidden_sizes`` are sizes a stored config must hold as positive integers.

Example:
    >>> from hf_varinit.arch.builder import build_config
    >>> build_config("varinit_mlp", n_layer=2, num_labels=3).hidden_sizes  # doctest: +SKIP
    [256, 256]
"""

from __future__ import annotations

from typing import Any

from hf_varinit.arch.table import Architecture
from hf_varinit_lab.model import VarInitMLPConfig

__all__ = ["VARINIT_MLP", "build_mlp_config"]


def build_mlp_config(*, n_layer: int | None = None, n_embd: int | None = None, **extra: Any) -> VarInitMLPConfig:
    """A `VarInitMLPConfig` with ``n_layer`` hidden layers of width ``n_embd`` (each None: the config's default);
    ``extra`` (``input_size``, ``num_labels``, ``activation``...) goes to the config as is."""
    default = VarInitMLPConfig().hidden_sizes
    width = n_embd if n_embd is not None else default[0]
    return VarInitMLPConfig(hidden_sizes=[width] * (n_layer if n_layer is not None else len(default)), **extra)


VARINIT_MLP = Architecture(modules={"classifier": "head"}, build=build_mlp_config,
                           options=("n_layer", "n_embd", "input_size", "num_labels"),
                           size_keys=("input_size", "hidden_sizes", "num_labels"))
