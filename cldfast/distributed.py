"""torch.distributed plumbing for the pipeline: process-group start-up from torchrun's
environment, rank/world queries, sharding of evaluation passes, and small reductions.

Every helper works unchanged in a single process (rank 0 of 1).
"""

from __future__ import annotations

import datetime
import os

import numpy as np
import torch
import torch.distributed as dist

__all__ = ["init_from_env", "rank_world", "is_main", "barrier", "sum_across", "eval_shard",
           "gather_batch", "local_device"]


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
