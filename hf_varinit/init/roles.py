"""The one place that knows architectures: every parameter (or slice) of a model mapped to a role.

A `TensorRole` names what a tensor does (``q``, ``mlp_in``, ``embedding``, ...), its layer, the slice of
the stored parameter it covers, and its *true* fan_in / fan_out. GPT-2 ``Conv1D`` stores weights as
(in, out), which `torch.nn.init` reads backwards; fused Q/K/V projections are split into three slices.

Module names come from the per-``model_type`` table of `hf_varinit.arch`; a model type the table does not
know falls back to per-module roles. A slice is one small class per kind (`ColumnBlock`, `RowBlock`,
`HeadInterleaved`).
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Iterator
from dataclasses import dataclass

import torch
from torch import nn
from transformers import PreTrainedModel
from transformers.pytorch_utils import Conv1D

from hf_varinit.arch.config import num_heads
from hf_varinit.arch.keys import layer_key
from hf_varinit.arch.table import Architecture, Fused, get_architecture
from hf_varinit.errors import RoleError

# Roles whose weights are lookup tables, not matrices applied to activations.
EMBEDDING_ROLES = frozenset({"embedding", "position", "token_type"})
# Output projections that add into the residual stream (GPT-2's 1/sqrt(2 n_layer) scaling).
RESIDUAL_ROLES = frozenset({"attn_out", "mlp_out"})
# Roles tracked by the recorder and reports.
TRACKED_ROLES = ("q", "k", "v", "attn_out", "mlp_gate", "mlp_in", "mlp_out", "linear", "embedding", "position", "head")


class Slice:
    """A view of part of a stored parameter, in the coordinates of the whole parameter (one subclass per kind).

    A slice selects along one axis (`axis`). `view` takes it from a whole tensor (writes go through to the
    parameter); `select` says which indices along that axis it keeps, for a shard that holds only some of them.
    """

    def view(self, tensor: torch.Tensor) -> torch.Tensor:
        """The slice of ``tensor`` as a view."""
        raise NotImplementedError

    def axis(self, ndim: int) -> int:
        """The axis the slice selects along, for a tensor of ``ndim`` dimensions."""
        return 0

    def select(self, index: torch.Tensor, size: int) -> torch.Tensor:
        """A bool mask over ``index`` (positions along `axis`, of ``size`` in all): the ones the slice keeps."""
        raise NotImplementedError

    def shape(self, shape: tuple[int, ...]) -> tuple[int, ...]:
        """The shape of the slice of a tensor of ``shape``."""
        raise NotImplementedError


@dataclass(frozen=True)
class ColumnBlock(Slice):
    """``W[:, start:stop]``: a column block of a fused GPT-2 ``Conv1D`` weight (stored (in, out))."""

    start: int
    stop: int

    def view(self, tensor):
        return tensor[..., self.start : self.stop]

    def axis(self, ndim):
        return ndim - 1

    def select(self, index, size):
        return (index >= self.start) & (index < self.stop)

    def shape(self, shape):
        return (*shape[:-1], self.stop - self.start)

    def __str__(self) -> str:
        return f"[:, {self.start}:{self.stop}]"


@dataclass(frozen=True)
class RowBlock(Slice):
    """``W[start:stop]``: a row block of a fused ``nn.Linear`` whose outputs are stacked (or of a fused bias)."""

    start: int
    stop: int

    def view(self, tensor):
        return tensor[self.start : self.stop]

    def select(self, index, size):
        return (index >= self.start) & (index < self.stop)

    def shape(self, shape):
        return (self.stop - self.start, *shape[1:])

    def __str__(self) -> str:
        return f"[{self.start}:{self.stop}]"


@dataclass(frozen=True)
class HeadInterleaved(Slice):
    """Part ``index`` of every head of a per-head interleaved fused projection (GPT-NeoX ``query_key_value``).

    The output axis is read as (num_heads, parts, head_dim) and part ``index`` is taken from every head.
    """

    index: int
    parts: int = 3
    num_heads: int = 1

    def view(self, tensor):
        rest = tensor.shape[1:]
        head_dim = tensor.shape[0] // (self.num_heads * self.parts)
        # (out, *rest) -> (num_heads, parts, head_dim, *rest): select one part of every head
        return tensor.view(self.num_heads, self.parts, head_dim, *rest)[:, self.index]

    def select(self, index, size):
        head_dim = size // (self.num_heads * self.parts)
        return (index // head_dim) % self.parts == self.index

    def shape(self, shape):
        # computed, not viewed: a sharded (FSDP2) parameter cannot be reshaped per head
        return (self.num_heads, shape[0] // (self.num_heads * self.parts), *shape[1:])

    def __str__(self) -> str:
        return f"heads[:, {self.index}::{self.parts}]"


@dataclass(frozen=True)
class TensorRole:
    """One initialisable tensor (a parameter, or a slice of one) and what it does.

    Attributes:
        name: the parameter's name in the model, e.g. ``transformer.h.0.attn.c_attn.weight``.
        key: the canonical id used by statistics and reports, e.g. ``layers.0.q`` or ``embedding``.
        role: q, k, v, attn_out, mlp_gate, mlp_in, mlp_out, linear, head, embedding, position,
            token_type, norm or bias.
        layer: the block index, or None outside the blocks.
        slice: the part of the stored parameter this entry covers, or None for all of it.
        fan_in / fan_out: the true fans of the (sliced) weight as a map from inputs to outputs.
        target: for biases and norm weights, the role of the tensor they belong to.
    """

    name: str
    key: str
    role: str
    layer: int | None
    slice: Slice | None
    fan_in: int
    fan_out: int
    shape: tuple[int, ...]
    target: str | None = None

    @property
    def tracked(self) -> bool:
        """Whether the recorder follows this tensor (weights of the tracked roles)."""
        return self.role in TRACKED_ROLES

    def view(self, param: torch.Tensor) -> torch.Tensor:
        return self.slice.view(param) if self.slice is not None else param


_LAYER_INDEX = re.compile(r"(?:^|\.)(\d+)(?:\.|$)")
_NORM_NAMES = ("LayerNorm", "RMSNorm", "GroupNorm", "BatchNorm")


def weight_fans(module: nn.Module, weight: torch.Tensor) -> tuple[int, int]:
    """True (fan_in, fan_out) of a module's weight seen as a map from inputs to outputs."""
    if isinstance(module, Conv1D):  # stored (in, out)
        return weight.shape[0], weight.shape[1]
    if isinstance(module, nn.Embedding):  # a lookup: one-hot(num_embeddings) -> embedding_dim
        return weight.shape[0], weight.shape[1]
    if weight.dim() < 2:
        return weight.shape[0], weight.shape[0]
    receptive = weight[0][0].numel() if weight.dim() > 2 else 1
    return weight.shape[1] * receptive, weight.shape[0] * receptive


def _layer_of(module_name: str) -> int | None:
    match = _LAYER_INDEX.search(module_name)
    return int(match.group(1)) if match else None


def _canonical_key(role: str, layer: int | None, is_bias: bool, module_name: str, known: bool) -> str:
    base = layer_key(layer, role)
    if (not known and role in ("linear", "embedding")) or (layer is None and role == "linear"):
        base = module_name  # modules the table does not name: one key per module (BERT's pooler, say)
    return f"{base}.bias" if is_bias else base


def _module_role(arch: Architecture | None, module_name: str, module: nn.Module) -> str | Fused | None:
    if arch is not None:
        for suffix, role in arch.modules.items():
            if module_name == suffix or module_name.endswith("." + suffix):
                return role
    name = type(module).__name__
    if any(n in name for n in _NORM_NAMES):
        return "norm"
    if isinstance(module, nn.Embedding):
        return "embedding"
    if isinstance(module, (nn.Linear, Conv1D)):
        return "linear"
    return None


def _fused_slices(fused: Fused, module: nn.Module, is_bias: bool, width: int, config) -> list[Slice]:
    """One slice per role of a fused projection: per head, or contiguous blocks of ``width`` outputs."""
    parts = len(fused.roles)
    if fused.layout == "interleaved":
        heads = num_heads(config)
        if not heads:
            raise RoleError(f"cannot split the interleaved Q/K/V of model_type {config.model_type!r}: no head count")
        return [HeadInterleaved(i, parts, heads) for i in range(parts)]
    block = ColumnBlock if isinstance(module, Conv1D) and not is_bias else RowBlock  # Conv1D stores (in, out)
    return [block(i * width, (i + 1) * width) for i in range(parts)]


def _fused_entries(module_name, module, param_name, param, fused: Fused, layer, config) -> list[TensorRole]:
    is_bias = param_name == "bias"
    full = f"{module_name}.{param_name}" if module_name else param_name
    out_axis_size = param.shape[-1] if isinstance(module, Conv1D) or is_bias else param.shape[0]
    parts = len(fused.roles)
    if out_axis_size % parts:
        raise RoleError(f"{full}: output size {out_axis_size} does not split into {parts} equal parts")
    width = out_axis_size // parts
    if is_bias:
        fan_in = width
    else:
        fan_in = param.shape[0] if isinstance(module, Conv1D) else param.shape[1]
    entries = []
    for role, sl in zip(fused.roles, _fused_slices(fused, module, is_bias, width, config)):
        entries.append(
            TensorRole(
                name=full,
                key=_canonical_key(role, layer, is_bias, module_name, True),
                role="bias" if is_bias else role,
                layer=layer,
                slice=sl,
                fan_in=fan_in,
                fan_out=width,
                shape=sl.shape(tuple(param.shape)),
                target=role if is_bias else None,
            )
        )
    return entries


def _sub_models(model: nn.Module, root_type: str | None) -> dict[str, object]:
    """Outermost nested ``PreTrainedModel``s of another model_type (parts of a composite model): prefix -> config."""
    out: dict[str, object] = {}
    for name, module in model.named_modules():
        config = getattr(module, "config", None)
        if (name and isinstance(module, PreTrainedModel) and getattr(config, "model_type", None) != root_type
                and not any(name.startswith(p + ".") for p in out)):
            out[name] = config
    return out


def iter_roles(model: nn.Module) -> Iterator[tuple[TensorRole, nn.Parameter, nn.Module]]:
    """Yield (role, parameter, owning module) for every parameter of ``model``, fused ones per slice.

    Tied parameters (e.g. GPT-2 ``wte`` / ``lm_head``) appear once, under their first name. In a composite
    model (an encoder-decoder, say) each part uses its own architecture, and its keys carry its prefix
    (``encoder.layers.0.q``).
    """
    root_config = getattr(model, "config", None)
    root_type = getattr(root_config, "model_type", None)
    parts = _sub_models(model, root_type)
    seen: set[int] = set()
    for module_name, module in model.named_modules():
        prefix = next((p for p in parts if module_name == p or module_name.startswith(p + ".")), "")
        config = parts[prefix] if prefix else root_config
        arch = get_architecture(getattr(config, "model_type", None))
        role = _module_role(arch, module_name, module)
        layer = _layer_of(module_name[len(prefix):])
        for param_name, param in module.named_parameters(recurse=False):
            if id(param) in seen:
                continue
            seen.add(id(param))
            full = f"{module_name}.{param_name}" if module_name else param_name
            if isinstance(role, Fused):
                entries = _fused_entries(module_name, module, param_name, param, role, layer, config)
            else:
                entries = [_plain_entry(full, module_name, module, param_name, param, role, layer, arch)]
            for entry in entries:
                if prefix and not entry.key.startswith(prefix + "."):
                    entry = dataclasses.replace(entry, key=f"{prefix}.{entry.key}")
                yield entry, param, module


def _plain_entry(full, module_name, module, param_name, param, role, layer, arch) -> TensorRole:
    is_bias = param_name == "bias"
    if role == "norm":
        entry_role, target = ("bias", "norm") if param_name == "bias" else ("norm", None)
        return TensorRole(full, f"{module_name}.{param_name}", entry_role, layer, None, param.numel(),
                          param.numel(), tuple(param.shape), target)
    if role is None:  # a parameter the table and the fallback do not cover: the model's own init
        role = "other"
    if is_bias:
        return TensorRole(full, _canonical_key(role, layer, True, module_name, arch is not None), "bias",
                          layer, None, param.numel(), param.numel(), tuple(param.shape), role)
    if param.dim() < 2 and role in ("linear", "embedding"):
        role = "other"  # a 1-D parameter of an unknown module (a scale, a temperature): the model's own init
    fan_in, fan_out = weight_fans(module, param)
    key = _canonical_key(role, layer, False, module_name, arch is not None)
    if role == "other":
        key = full
    return TensorRole(full, key, role, layer, None, fan_in, fan_out, tuple(param.shape))


def get_roles(model: nn.Module) -> list[TensorRole]:
    """Every parameter (or slice) of ``model`` with its role, layer and true fans.

    Example:
        >>> roles = get_roles(GPT2Model(GPT2Config(n_layer=2, n_embd=32, n_head=4)))
        >>> [r.key for r in roles if r.layer == 0 and r.role in ("q", "k", "v")]
        ['layers.0.q', 'layers.0.k', 'layers.0.v']
    """
    return [entry for entry, _, _ in iter_roles(model)]


def tracked_roles(model: nn.Module) -> list[tuple[TensorRole, nn.Parameter]]:
    """The weights the recorder follows (Q/K/V slices, projections, embeddings, head), keyed uniquely."""
    out, keys = [], set()
    for entry, param, _ in iter_roles(model):
        if entry.tracked and entry.key not in keys:
            keys.add(entry.key)
            out.append((entry, param))
    return out


def tracked_shapes(model: nn.Module) -> dict[str, tuple[int, ...]]:
    """``{key: shape}`` of the tracked weights (a Q/K/V slice by its own shape): what a variance report must match."""
    return {entry.key: tuple(entry.shape) for entry, _ in tracked_roles(model)}
