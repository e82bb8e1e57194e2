"""Every torch.distributed collective cldfast uses, in one place: process-group start-up
from torchrun's environment, rank/world queries, sharding of evaluation passes, small
reductions, and the tensor collectives of the tracker and the framework integrations.

Every helper works unchanged in a single process (rank 0 of 1).
"""

from __future__ import annotations

import datetime
import os
from typing import Any

import numpy as np
import torch
import torch.distributed as dist

__all__ = ["init_from_env", "rank_world", "discover", "is_main", "barrier", "sum_across",
           "values_across", "eval_shard", "gather_batch", "local_device", "all_reduce_sum_",
           "reduce_scatter_sum", "all_gather_flat", "gather_to_first", "gather_1d"]

_reduce_scatter = getattr(dist, "reduce_scatter_single", None) or dist.reduce_scatter_tensor
_all_gather = getattr(dist, "all_gather_single", None) or dist.all_gather_into_tensor


def init_from_env(timeout_minutes: float = 30.0) -> bool:
    """Start the default process group when launched by torchrun (WORLD_SIZE > 1).

    NCCL when CUDA is available, Gloo otherwise. Returns whether this is a distributed run.
    """
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return False
    if not dist.is_initialized():
        backend = "nccl" if torch.cuda.is_available() else "gloo"
        if torch.cuda.is_available():
            torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
        dist.init_process_group(backend, timeout=datetime.timedelta(minutes=timeout_minutes))
    return True


def rank_world() -> tuple[int, int]:
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def discover(distributed: bool | None, group: Any = None) -> tuple[bool, int, int]:
    """(distributed, world size, rank) of an object that shards over ``group``:
    ``distributed=None`` when a process group with more than one rank is initialised,
    ``True`` requires one, ``False`` is one whole process (rank 0 of 1)."""
    ready = dist.is_available() and dist.is_initialized()
    if distributed is None:
        distributed = ready and dist.get_world_size(group) > 1
    elif distributed and not ready:
        raise RuntimeError("distributed=True but torch.distributed has no initialised process "
                           "group; call torch.distributed.init_process_group first")
    if not distributed:
        return False, 1, 0
    return True, dist.get_world_size(group), dist.get_rank(group)


def is_main() -> bool:
    return rank_world()[0] == 0


def barrier() -> None:
    if rank_world()[1] > 1:
        dist.barrier()


def _collective_device() -> torch.device:
    """NCCL reduces CUDA tensors only; Gloo works on the CPU."""
    return torch.device("cuda", torch.cuda.current_device()) if dist.get_backend() == "nccl" \
        else torch.device("cpu")


def sum_across(values: list[float]) -> list[float]:
    """Element-wise sum of a few numbers over all ranks (float64)."""
    if rank_world()[1] == 1:
        return list(values)
    t = torch.tensor(values, dtype=torch.float64, device=_collective_device())
    dist.all_reduce(t)
    return t.tolist()


def values_across(value: float) -> list[float]:
    """One number from every rank, in rank order (float64)."""
    rank, world = rank_world()
    if world == 1:
        return [float(value)]
    t = torch.full((world,), 0.0, dtype=torch.float64, device=_collective_device())
    t[rank] = float(value)
    dist.all_reduce(t)
    return t.tolist()


def gather_batch(*tensors: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """Concatenate each tensor over all ranks (same shape on every rank: DistributedSampler
    gives every rank equally many samples, so the i-th batches match). Float tensors travel
    as float32."""
    rank, world = rank_world()
    if world == 1:
        return tensors
    out = []
    for t in tensors:
        t = t.float() if t.is_floating_point() else t
        t = t.to(_collective_device()).contiguous()
        buf = torch.empty((world * t.shape[0], *t.shape[1:]), dtype=t.dtype, device=t.device)
        dist.all_gather_into_tensor(buf, t)
        out.append(buf)
    return tuple(out)


def eval_shard(count: int) -> np.ndarray:
    """Positions 0..count-1 this rank evaluates: every world-th one, without padding, so that
    each position is evaluated by exactly one rank."""
    rank, world = rank_world()
    return np.arange(rank, count, world, dtype=np.int64)


def local_device(device: torch.device) -> torch.device:
    """Under torchrun each rank uses the GPU of its LOCAL_RANK."""
    if device.type == "cuda" and rank_world()[1] > 1:
        return torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
    return device


# ----- tensor collectives of the tracker (on the tracker's own process group) ------------

def all_reduce_sum_(t: torch.Tensor, group: Any = None) -> torch.Tensor:
    """Sum ``t`` in place over the ranks of ``group``."""
    dist.all_reduce(t, group=group)
    return t


def reduce_scatter_sum(out: torch.Tensor, flat: torch.Tensor, group: Any = None) -> torch.Tensor:
    """``out`` [len(flat) / W] = this rank's slot of ``flat`` summed over the ranks."""
    _reduce_scatter(out, flat, group=group)
    return out


def all_gather_flat(out: torch.Tensor, local: torch.Tensor, group: Any = None) -> torch.Tensor:
    """``out`` [W * len(local)] = every rank's ``local``, in rank order."""
    _all_gather(out, local, group=group)
    return out


def gather_to_first(local: torch.Tensor, group: Any = None) -> torch.Tensor | None:
    """Every rank's ``local`` (equal shapes) concatenated on the group's first rank; None on
    the others."""
    world = dist.get_world_size(group)
    first = dist.get_rank(group) == 0
    parts = [torch.empty_like(local) for _ in range(world)] if first else None
    dist.gather(local, parts, dst=dist.get_global_rank(group, 0) if group else 0, group=group)
    return torch.cat(parts) if first else None


# ----- collectives of the framework integrations (default group) ------------------------

def gather_1d(t: torch.Tensor) -> torch.Tensor:
    """All-gather a 1-D tensor whose length may differ per rank (padded to the longest, then
    cut), concatenated in rank order; the tensor itself in a single process."""
    rank, world = rank_world()
    if world == 1:
        return t
    size = torch.tensor([t.shape[0]], device=t.device)
    sizes = [torch.zeros_like(size) for _ in range(world)]
    dist.all_gather(sizes, size)
    longest = int(max(int(s) for s in sizes))
    padded = torch.zeros(longest, dtype=t.dtype, device=t.device)
    padded[: t.shape[0]] = t
    parts = [torch.zeros_like(padded) for _ in range(world)]
    dist.all_gather(parts, padded)
    return torch.cat([p[: int(s)] for p, s in zip(parts, sizes)])
