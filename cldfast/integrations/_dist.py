"""Collectives shared by the framework integrations (no framework imports here)."""

from __future__ import annotations

import torch
import torch.distributed as dist


def _world() -> tuple[int, int]:
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def gather_1d(t: torch.Tensor) -> torch.Tensor:
    """All-gather a 1-D tensor whose length may differ per rank (padded to the longest, then
    cut), concatenated in rank order; the tensor itself in a single process."""
    rank, world = _world()
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


def shard_indices(n: int) -> list[int]:
    """This rank's share of positions 0..n-1 (every position on exactly one rank)."""
    rank, world = _world()
    return list(range(rank, n, world))
