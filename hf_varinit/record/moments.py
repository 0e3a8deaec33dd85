"""The moment kernels: mean, population variance and second moment of weights (dense, ZeRO-3 or sharded).

Every tensor (or slice of one) is reduced to its element count, sum and sum of squares (vectorised passes, not
Welford; no ``.item()``); `combine` turns them into the population mean and variance in float64,
``var = E[x^2] - E[x]^2``, exact enough for weights, whose mean is small next to their spread. The second moment
is ``var + mean^2``. (``torch.var_mean`` gives the same numbers to ~1e-6 but is ~8x slower on CPU.)

Dense and ZeRO-3 weights: `DenseMoments`. Each parameter is reduced once, whatever its slices: it is viewed as
``(R, g)`` rows of ``g`` contiguous elements, ``g`` chosen so that every slice of it (GPT-2's fused Q/K/V column
blocks, row blocks, per-head parts) is a union of whole rows; each row gives its float32 sum and sum of squares
(two reductions over the parameter, no copy of any slice). The (rows, 2) pieces of all parameters are
concatenated on the device and moved to the host in ONE transfer, where the rows are added into their entries
in float64.

Sharded (FSDP2 / DTensor) weights are never gathered when avoidable: every rank reduces its local shard, and
the rows of all entries are summed across ranks by ONE ``all_reduce`` per record. A `TensorRole` slice applies
to the *global* parameter. On a shard along dim ``d`` (FSDP2 shards dim 0):

* a slice along another axis (GPT-2 fused Q/K/V ``cols`` on a dim-0 shard) is applied to the local shard as is;
* a slice along ``d`` (``rows``, ``interleaved``, or ``cols`` of a 1-D tensor) is mapped to the local
  shard's global row range ``[offset, offset + local_rows)``: the rows of that range the slice selects.

DTensors this cannot reduce shard by shard (``Partial``, several sharded mesh dims, a second process group)
are gathered with ``full_tensor()``: a collective every rank calls in the same order, since all ranks hold
the same entries.

DeepSpeed ZeRO-3 parameters (``ds_id``; each rank holds an empty placeholder) are gathered one at a time with
``deepspeed.zero.GatheredParameters`` on every rank, so memory stays bounded by the largest tracked tensor; the
entries of one parameter (fused Q/K/V) share one gather.
"""

from __future__ import annotations

import contextlib
import importlib
import math
from collections.abc import Iterator

import numpy as np
import torch
import torch.distributed as dist
from torch import nn
from torch.distributed.tensor import DTensor, Replicate, Shard

from hf_varinit.errors import ConfigError
from hf_varinit.init.roles import TensorRole

try:  # private, but the one place that knows how DTensor lays out uneven shards
    from torch.distributed.tensor._utils import compute_local_shape_and_global_offset as _local_offset
except ImportError:  # pragma: no cover - older / newer torch without it
    _local_offset = None

__all__ = ["DenseMoments", "combine", "is_sharded", "is_zero3", "local_moments", "needs_all_ranks", "partial_sums",
           "rebind", "require_deepspeed", "second_moment", "var_mean"]

Entries = list[tuple[TensorRole, nn.Parameter]]
MIN_ROW = 16  # shorter rows (slices finer than this): each slice of the parameter is reduced through its view


def partial_sums(x: torch.Tensor, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """``[sum, sum of squares]`` of all elements of ``x``, accumulated in ``dtype``, on ``x``'s device.

    Args:
        x (`torch.Tensor`): any tensor or view (a copy is made only for strided views and other dtypes).
        dtype (`torch.dtype`): the accumulation type: float32 for dense weights, float64 for shards.
    """
    flat = x.detach().to(dtype).reshape(-1)
    return torch.stack((flat.sum(), torch.dot(flat, flat)))


def combine(count: torch.Tensor, sums: torch.Tensor) -> torch.Tensor:
    """(T, 2) float32 ``[population variance, mean]`` from (T,) counts and (T, 2) ``[sum, sum of squares]``."""
    count, sums = count.double(), sums.double()
    mean = sums[:, 0] / count
    var = (sums[:, 1] / count - mean * mean).clamp_min(0.0)
    return torch.stack((var, mean), dim=1).float()


def second_moment(var: np.ndarray, mean: np.ndarray) -> np.ndarray:
    """``E[W^2] = var + mean^2``, computed in float64 and stored as float32."""
    return (np.asarray(var, dtype=np.float64) + np.asarray(mean, dtype=np.float64) ** 2).astype(np.float32)


def is_sharded(entries: Entries) -> bool:
    """Whether any tracked parameter is a DTensor (an FSDP2 / tensor-parallel shard)."""
    return any(isinstance(param, DTensor) for _, param in entries)


def is_zero3(param: torch.Tensor) -> bool:
    """Whether ``param`` is a DeepSpeed ZeRO-3 partition (its ``ds_id`` is set; its data an empty placeholder)."""
    return hasattr(param, "ds_id")


def needs_all_ranks(entries: Entries) -> bool:
    """Whether computing the statistics is a collective: some parameter is a DTensor or a ZeRO-3 partition."""
    return is_sharded(entries) or any(is_zero3(param) for _, param in entries)


def require_deepspeed(what: str = "the recorder"):
    """The ``deepspeed`` module, or `ConfigError` naming the fix when it is not importable."""
    try:
        return importlib.import_module("deepspeed")
    except ImportError as exc:
        raise ConfigError(f"{what}: the model's parameters are DeepSpeed ZeRO-3 partitions (ds_id set, empty "
                          "placeholders), but deepspeed is not importable here; `pip install deepspeed` so every "
                          "rank can gather them one at a time, or record without ZeRO-3 (stage 1/2, DDP or FSDP)"
                          ) from exc


def _gathered(entries: Entries) -> Iterator[tuple[TensorRole, torch.Tensor]]:
    """(entry, its parameter's data), each ZeRO-3 parameter gathered while its consecutive entries are reduced."""
    i = 0
    while i < len(entries):
        param = entries[i][1]
        j = i + 1
        while j < len(entries) and entries[j][1] is param:
            j += 1
        if is_zero3(param):
            with require_deepspeed().zero.GatheredParameters([param], modifier_rank=None):  # every rank, in order
                for entry, _ in entries[i:j]:
                    yield entry, param.detach()
        else:
            for entry, _ in entries[i:j]:
                yield entry, param.detach()
        i = j


def _slice_axis(entry: TensorRole, ndim: int) -> int | None:
    return None if entry.slice is None else entry.slice.axis(ndim)


def _local_part(entry: TensorRole, local: torch.Tensor, shard_dim: int | None, offset: int,
                global_shape: tuple[int, ...] | None) -> torch.Tensor:
    """The elements of ``entry``'s (global) slice that lie in ``local``, a shard along ``shard_dim``."""
    axis = _slice_axis(entry, local.dim())
    if shard_dim is None or axis is None or axis != shard_dim:
        return entry.view(local)  # the slice runs along an axis the shard holds whole
    idx = torch.arange(offset, offset + local.shape[axis], device=local.device)  # global indices of the shard
    keep = entry.slice.select(idx, (global_shape or local.shape)[axis])
    return local.index_select(axis, idx[keep] - offset)


def local_moments(
    entry: TensorRole,
    local: torch.Tensor,
    shard_dim: int | None = None,
    offset: int = 0,
    global_shape: tuple[int, ...] | None = None,
) -> torch.Tensor:
    """Float64 ``[count, sum, sum of squares]`` of the part of ``entry`` that lies in ``local``.

    Args:
        entry (`TensorRole`): the role; its slice is in the coordinates of the full parameter.
        local (`torch.Tensor`): the whole parameter (``shard_dim=None``) or this rank's shard along ``shard_dim``.
        shard_dim (`int`, *optional*): the axis the parameter is sharded along, or None for a full tensor.
        offset (`int`): the global index of the shard's first element along ``shard_dim``.
        global_shape (`tuple[int, ...]`, *optional*): the full parameter's shape (for ``interleaved`` slices
            on a dim-0 shard).
    """
    part = _local_part(entry, local.detach(), shard_dim, offset, global_shape)
    return torch.cat((part.new_tensor([part.numel()], dtype=torch.float64), partial_sums(part, torch.float64)))


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


def _dtensor_part(entry: TensorRole, data: DTensor, group) -> tuple[torch.Tensor, object]:
    """(the part of ``entry`` this rank reduces, the process group to sum it over or None)."""
    kind, dim, offset, shard_group = _shard_layout(data)
    if kind == "shard" and group is not None and shard_group is not group:
        kind = "gather"  # one all_reduce, one group: a tensor sharded over another group is gathered
    if kind == "shard":
        return _local_part(entry, data.to_local(), dim, offset, tuple(data.shape)), shard_group
    full = data.to_local() if kind == "replicate" else data.full_tensor()
    return entry.view(full), None


@torch.no_grad()
def var_mean(entries: Entries) -> torch.Tensor:
    """(T, 2) float32 ``[population variance, mean]`` of every entry's tensor or slice, on the weights' device.

    Collective when any entry is a DTensor or a ZeRO-3 partition (`needs_all_ranks`): every rank of the process
    group must call it with the same entries (as `VarianceRecorder` does: its entries come from the same model
    everywhere), and every rank gets the same result. Otherwise no collective is issued.

    Args:
        entries (`list[tuple[TensorRole, nn.Parameter]]`): roles and their current parameters (see `rebind`).
    """
    if not entries:
        return torch.zeros(0, 2)
    dtype = torch.float64 if is_sharded(entries) else torch.float32
    counts, rows, reduced = [], [], []
    group = device = None
    for entry, data in _gathered(entries):
        part, part_group = _dtensor_part(entry, data, group) if isinstance(data, DTensor) else (entry.view(data), None)
        if part_group is not None:
            group = part_group
            device = part.device  # the collective runs where the shards live
        device = device or part.device
        counts.append(part.numel())
        rows.append(partial_sums(part, dtype))
        reduced.append(part_group is not None)
    sums = torch.stack([row.to(device) for row in rows])  # (T, 2): sum, sum of squares
    count = torch.tensor(counts, dtype=torch.float64, device=device)  # one host-to-device copy
    if group is not None:
        moments = torch.cat((count.unsqueeze(1), sums.double()), dim=1)  # (T, 3)
        mask = torch.tensor(reduced, device=device).unsqueeze(1)
        shared = torch.where(mask, moments, torch.zeros_like(moments))
        dist.all_reduce(shared, op=dist.ReduceOp.SUM, group=group)  # the one collective of this record
        moments = torch.where(mask, shared, moments)
        count, sums = moments[:, 0], moments[:, 1:]
    return combine(count, sums)


def rebind(roles: list[TensorRole], model: nn.Module) -> Entries:
    """Pair ``roles`` with ``model``'s current parameters by name.

    ``fully_shard`` replaces every parameter with a new DTensor ``nn.Parameter``, so entries taken before
    sharding point at the old tensors; and roles are best taken before sharding (an ``interleaved`` slice
    cannot be viewed on an unevenly sharded DTensor). Get the roles from the unsharded model, shard, rebind.
    """
    return [(role, model.get_parameter(role.name)) for role in roles]


# ----------------------------------------------------------------------------- dense weights: one pass per parameter


def _masks(role: TensorRole, shape: tuple[int, ...]) -> tuple[np.ndarray, np.ndarray]:
    """(rows, columns) bool masks of ``role`` over ``shape`` seen as (rows, last dim): its elements are the
    selected columns of the selected rows (a slice runs along one axis)."""
    ndim, last = len(shape), shape[-1]
    rows, cols = np.ones(math.prod(shape) // last, dtype=bool), np.ones(last, dtype=bool)
    if role.slice is not None:
        axis = role.slice.axis(ndim)
        keep = role.slice.select(torch.arange(shape[axis]), shape[axis]).numpy()
        if axis == ndim - 1:
            cols = keep
        else:  # row r holds index (r // inner) % shape[axis] along the axis
            rows = keep[(np.arange(len(rows)) // math.prod(shape[axis + 1 : -1])) % shape[axis]]
    return rows, cols


class DenseMoments:
    """[variance, mean] of every entry of dense (or DeepSpeed ZeRO-3) weights: one reduction pass per parameter,
    however many slices it holds, and one device-to-host transfer per call.

    A parameter tracked whole gives one row (its sum and dot product with itself); a sliced one gives a row per
    ``g`` contiguous elements (row sums and row norms), ``g`` the largest length on which all its slices start and
    end; slices finer than `MIN_ROW` elements are reduced through their views.

    Args:
        entries (`list[tuple[TensorRole, nn.Parameter]]`): roles and their parameters (not DTensors).
        shapes (`list[tuple[int, ...]]`, *optional*): the full shape of each entry's parameter, where the parameter
            is a ZeRO-3 placeholder (default: the parameters' own shapes).

    Example:
        >>> moments = DenseMoments(tracked_roles(model))
        >>> moments()  # (T, 2) float32 [population variance, mean] on the CPU
    """

    def __init__(self, entries: Entries, shapes: list[tuple[int, ...]] | None = None):
        shapes = shapes or [tuple(param.shape) for _, param in entries]
        self.roles = [role for role, _ in entries]
        by_param: dict[int, list[int]] = {}
        for i, (_, param) in enumerate(entries):
            by_param.setdefault(id(param), []).append(i)
        self.groups: list[tuple[nn.Parameter, int | None, list[int]]] = []  # (param, row length g, its entries)
        self.count = np.zeros(len(entries))
        pair_entry, pair_row, offset = [], [], 0  # entry i adds row r of the concatenated pieces
        for members in by_param.values():
            shape = shapes[members[0]] or (1,)
            masks = [_masks(self.roles[i], shape) for i in members]
            for i, (rows, cols) in zip(members, masks):
                self.count[i] = rows.sum() * cols.sum()
            if all(self.roles[i].slice is None for i in members):  # whole: one row
                g, n_rows, ids = math.prod(shape), 1, [np.zeros(1, dtype=np.int64)] * len(members)
            else:
                edges = [int(e) for _, cols in masks for e in np.flatnonzero(np.diff(np.r_[False, cols, False]))]
                g = math.gcd(shape[-1], *edges)  # every slice starts and ends on a row boundary
                if g < MIN_ROW:
                    g, n_rows, ids = None, len(members), [np.array([k]) for k in range(len(members))]
                else:
                    per_row, n_rows = shape[-1] // g, math.prod(shape) // g
                    ids = [(np.flatnonzero(rows)[:, None] * per_row + np.flatnonzero(cols[::g])).reshape(-1)
                           for rows, cols in masks]
            for i, rows in zip(members, ids):
                pair_entry += [i] * len(rows)
                pair_row += (offset + rows).tolist()
            self.groups.append((entries[members[0]][1], g, members))
            offset += n_rows
        self._pair_entry, self._pair_row = np.asarray(pair_entry, dtype=np.int64), np.asarray(pair_row, np.int64)

    @torch.no_grad()
    def __call__(self) -> torch.Tensor:
        """(T, 2) float32 ``[population variance, mean]`` of every entry, on the CPU."""
        sums, squares = [], []  # per parameter: its rows' sums and sums of squares, on its device
        for param, g, members in self.groups:
            with _whole(param):  # ZeRO-3: gathered on every rank, one parameter at a time
                data = param.detach().float()  # no copy for float32 weights
                if g is None:
                    parts = [self.roles[i].view(data).reshape(-1) for i in members]
                    sums += [part.sum().view(1) for part in parts]
                    squares += [torch.dot(part, part).view(1) for part in parts]
                elif g == data.numel():
                    flat = data.reshape(-1)
                    sums.append(flat.sum().view(1))
                    squares.append(torch.dot(flat, flat).view(1))
                else:
                    rows = data.reshape(-1, g)  # (R, g): a view of contiguous weights
                    sums.append(rows.sum(1))
                    squares.append(torch.linalg.vector_norm(rows, dim=1).square())
        device = sums[0].device
        stats = torch.stack((torch.cat([x.to(device) for x in sums]), torch.cat([x.to(device) for x in squares])), 1)
        stats = stats.cpu().double().numpy()  # (rows, 2): the one device-to-host transfer
        totals = np.stack([np.bincount(self._pair_entry, stats[self._pair_row, k], minlength=len(self.roles))
                           for k in (0, 1)], axis=1)
        return combine(torch.from_numpy(self.count), torch.from_numpy(totals))


def _whole(param: torch.Tensor):
    """A context in which ``param`` holds its full data (a ZeRO-3 gather on every rank; nothing otherwise)."""
    if is_zero3(param):
        return require_deepspeed().zero.GatheredParameters([param], modifier_rank=None)
    return _NO_GATHER


_NO_GATHER = contextlib.nullcontext()
