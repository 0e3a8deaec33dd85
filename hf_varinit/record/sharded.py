"""Weight statistics of sharded (FSDP2 / DTensor) models without gathering the weights.

`sharded_var_mean` is the sharded counterpart of `VarianceRecorder.compute`: every rank reduces its local
shard of each tracked tensor (or slice) to float64 ``(count, sum, sum of squares)``, the rows of all entries
are summed across ranks by ONE ``all_reduce``, and each rank returns the same (T, 2) float32
``[population variance, mean]``.

A `TensorRole` slice applies to the *global* parameter. On a shard along dim ``d`` (FSDP2 shards dim 0):

* a slice along another axis (GPT-2 ``c_attn`` Q/K/V ``cols`` on a dim-0 shard) is applied to the local
  shard as is;
* a slice along ``d`` (``rows``, ``interleaved``, or ``cols`` of a 1-D tensor) is mapped to the local
  shard's global row range ``[offset, offset + local_rows)``: the rows of that range the slice selects.

DTensors this cannot reduce shard by shard (``Partial``, several sharded mesh dims, a second process
group) are gathered with ``full_tensor()``: a collective every rank calls in the same order, since all
ranks hold the same entries. The variance is ``E[x^2] - E[x]^2`` in float64, exact enough for weights,
whose mean is small next to their spread.
"""

from __future__ import annotations

import math

import torch
import torch.distributed as dist
from torch import nn
from torch.distributed.tensor import DTensor, Replicate, Shard

from hf_varinit.errors import RoleError
from hf_varinit.init.roles import TensorRole

try:  # private, but the one place that knows how DTensor lays out uneven shards
    from torch.distributed.tensor._utils import compute_local_shape_and_global_offset as _local_offset
except ImportError:  # pragma: no cover - older / newer torch without it
    _local_offset = None

__all__ = ["is_sharded", "local_moments", "rebind", "sharded_var_mean"]


def is_sharded(entries: list[tuple[TensorRole, nn.Parameter]]) -> bool:
    """Whether any tracked parameter is a DTensor (an FSDP2 / tensor-parallel shard)."""
    return any(isinstance(param, DTensor) for _, param in entries)


def _slice_axis(entry: TensorRole, ndim: int) -> int | None:
    if entry.slice is None:
        return None
    return ndim - 1 if entry.slice.kind == "cols" else 0


def local_moments(
    entry: TensorRole,
    local: torch.Tensor,
    shard_dim: int | None = None,
    offset: int = 0,
    global_shape: tuple[int, ...] | None = None,
) -> torch.Tensor:
    """Float64 ``[count, sum, sum of squares]`` of the part of ``entry`` that lies in ``local``.

    Args:
        entry: the role; its slice is in the coordinates of the full parameter.
        local: the whole parameter (``shard_dim=None``) or this rank's shard of it along ``shard_dim``.
        shard_dim: the axis the parameter is sharded along, or None for a full tensor.
        offset: the global index of the shard's first element along ``shard_dim``.
        global_shape: the full parameter's shape (needed for ``interleaved`` slices on a dim-0 shard).
    """
    local = local.detach()
    axis = _slice_axis(entry, local.dim())
    if shard_dim is None or axis is None or axis != shard_dim:
        part = entry.view(local)  # the slice runs along an axis the shard holds whole
    else:
        sl = entry.slice
        idx = torch.arange(offset, offset + local.shape[axis], device=local.device)
        if sl.kind in ("cols", "rows"):
            keep = (idx >= sl.start) & (idx < sl.stop)
        elif sl.kind == "interleaved":
            rows = (global_shape or local.shape)[0]
            head_dim = rows // (sl.num_heads * sl.parts)
            keep = (idx // head_dim) % sl.parts == sl.index
        else:
            raise RoleError(f"unknown slice kind {sl.kind!r}")
        part = local.index_select(axis, idx[keep] - offset)
    x = part.to(torch.float64)
    return torch.stack([x.new_tensor(float(x.numel())), x.sum(), (x * x).sum()])


def _shard_layout(param: DTensor) -> tuple[str, int, int, object]:
    """("shard", dim, offset, group), ("replicate", 0, 0, None) or ("gather", 0, 0, None) for ``param``."""
    placements = tuple(param.placements)
    if all(isinstance(p, Replicate) for p in placements):
        return "replicate", 0, 0, None
    sharded = [i for i, p in enumerate(placements) if isinstance(p, Shard)]
    others_replicated = all(isinstance(p, (Shard, Replicate)) for p in placements)
    # exactly one sharded mesh dim, the rest replicated (FSDP2; HSDP's (Replicate, Shard(0)))
    if len(sharded) != 1 or not others_replicated or type(placements[sharded[0]]) is not Shard:
        return "gather", 0, 0, None
    mesh_dim = sharded[0]
    dim = placements[mesh_dim].dim % param.dim()
    mesh = param.device_mesh
    if _local_offset is not None:
        _, offsets = _local_offset(param.shape, mesh, placements)
        offset = offsets[dim]
    else:  # torch.chunk layout on the sharded mesh dim
        chunk = math.ceil(param.shape[dim] / mesh.size(mesh_dim))
        offset = min(mesh.get_local_rank(mesh_dim) * chunk, param.shape[dim])
    return "shard", dim, int(offset), mesh.get_group(mesh_dim)


@torch.no_grad()
def sharded_var_mean(entries: list[tuple[TensorRole, nn.Parameter]]) -> torch.Tensor:
    """(T, 2) float32 ``[population variance, mean]`` per entry, computed from the local shards.

    Collective when any entry is reduced shard by shard: every rank of the shards' process group must call
    it with the same entries (as `VarianceRecorder` does: its entries come from the same model everywhere).
    Plain (non-DTensor) parameters and replicated DTensors are computed locally; the result is the same on
    every rank. Without DTensors no collective is issued and it matches ``torch.var_mean(correction=0)``.
    """
    if not entries:
        return torch.zeros(0, 2)
    rows: list[torch.Tensor] = []
    reduce_mask: list[bool] = []
    group = None
    device = None
    for entry, param in entries:
        data = param.detach()
        if not isinstance(data, DTensor):
            rows.append(local_moments(entry, data))
            reduce_mask.append(False)
            device = device or data.device
            continue
        kind, dim, offset, shard_group = _shard_layout(data)
        if kind == "shard" and group is not None and shard_group is not group:
            kind = "gather"  # one all_reduce, one group: a tensor sharded over another group is gathered
        if kind == "shard":
            group = shard_group
            local = data.to_local()
            device = local.device  # the collective runs where the shards live
            rows.append(local_moments(entry, local, dim, offset, tuple(data.shape)))
            reduce_mask.append(True)
        else:
            full = data.to_local() if kind == "replicate" else data.full_tensor()
            rows.append(local_moments(entry, full))
            reduce_mask.append(False)
            device = device or full.device
    moments = torch.stack([row.to(device) for row in rows])  # (T, 3) float64: count, sum, sum of squares
    if group is not None:
        mask = torch.tensor(reduce_mask, device=device).unsqueeze(1)
        shared = torch.where(mask, moments, torch.zeros_like(moments))
        dist.all_reduce(shared, op=dist.ReduceOp.SUM, group=group)  # the one collective
        moments = torch.where(mask, shared, moments)
    count, total, squares = moments.unbind(1)
    mean = total / count
    var = (squares / count - mean * mean).clamp_min(0.0)
    return torch.stack([var, mean], dim=1).float()


def rebind(roles: list[TensorRole], model: nn.Module) -> list[tuple[TensorRole, nn.Parameter]]:
    """Pair ``roles`` with ``model``'s current parameters by name.

    ``fully_shard`` replaces every parameter with a new DTensor ``nn.Parameter``, so entries taken before
    sharding point at the old tensors; and roles are best taken before sharding (an ``interleaved`` slice
    cannot be viewed on an unevenly sharded DTensor). Get the roles from the unsharded model, shard, rebind.
    """
    return [(role, model.get_parameter(role.name)) for role in roles]
