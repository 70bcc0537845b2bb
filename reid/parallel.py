"""Collectives over ``torch.distributed`` that are no-ops in one process.

Below every package that needs them: the evaluation shards feature extraction over the ranks of a
distributed run and gathers the shards back (:func:`shard_bounds`, :func:`gather_shards`), and the
engine gathers sampler and RNG states for its checkpoints. The process group itself (set-up, DDP,
synchronised BatchNorm) belongs to the engine (:mod:`reid.engine.distributed`).
"""

from __future__ import annotations

from typing import Any

import torch
import torch.distributed as dist

from reid.errors import ReidError


def all_gather_no_grad(x: torch.Tensor) -> torch.Tensor:
    if not is_distributed():
        return x
    parts = [torch.empty_like(x) for _ in range(dist.get_world_size())]
    dist.all_gather(parts, x.contiguous())
    return torch.cat(parts, dim=0)


def rank_and_world() -> tuple[int, int]:
    """``(rank, world size)`` of the active process group, ``(0, 1)`` without one."""
    if not is_distributed():
        return 0, 1
    return dist.get_rank(), dist.get_world_size()


def shard_bounds(n: int, rank: int, world: int) -> tuple[int, int]:
    """Rank ``rank``'s contiguous slice ``[start, stop)`` of ``n`` items; sizes differ by at most one."""
    return rank * n // world, (rank + 1) * n // world


def gather_shards(part: torch.Tensor, n: int) -> torch.Tensor:
    """Every rank's contiguous shard (see :func:`shard_bounds`) of an ``[n, ...]`` tensor, in order.

    The collective needs equal shapes, so each shard is padded to the largest and trimmed after.
    """
    if not is_distributed():
        return part
    rank, world = rank_and_world()
    sizes = [stop - start for start, stop in (shard_bounds(n, r, world) for r in range(world))]
    if part.shape[0] != sizes[rank]:
        raise ReidError(f"rank {rank} holds {part.shape[0]} rows but its shard of {n} has {sizes[rank]}")
    longest = max(sizes)
    padded = part.new_zeros((longest, *part.shape[1:]))
    padded[: part.shape[0]] = part
    parts = [torch.empty_like(padded) for _ in range(world)]
    dist.all_gather(parts, padded.contiguous())
    return torch.cat([p[:size] for p, size in zip(parts, sizes)], dim=0)


def all_reduce_(x: torch.Tensor) -> torch.Tensor:
    """In-place sum over ranks (for statistics; no gradient)."""
    if is_distributed():
        dist.all_reduce(x)
    return x


def all_gather_objects(obj: Any) -> list[Any]:
    """Every rank's picklable ``obj`` (small things only: sampler and RNG states for checkpoints)."""
    if not is_distributed():
        return [obj]
    out: list[Any] = [None] * dist.get_world_size()
    dist.all_gather_object(out, obj)
    return out


def is_distributed() -> bool:
    """True inside a process group of more than one process."""
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1
