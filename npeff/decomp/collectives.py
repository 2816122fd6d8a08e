"""Collectives over the ranks of a column-block decomposition; no-ops outside DDP.

Each rank holds a column block of A and of G (or H); W is replicated. Only n·C×r and r×r
tensors are summed per step (design.md §4), so traffic does not grow with the parameter count.
"""

from __future__ import annotations

import torch
import torch.distributed as dist


def is_distributed() -> bool:
    return dist.is_available() and dist.is_initialized()


def rank_and_world() -> tuple[int, int]:
    """(rank, world size); (0, 1) outside DDP."""
    if is_distributed():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def all_reduce_sum(t: torch.Tensor) -> torch.Tensor:
    """Sum ``t`` over ranks in place and return it (unchanged with one process)."""
    if is_distributed() and dist.get_world_size() > 1:
        dist.all_reduce(t, op=dist.ReduceOp.SUM)
    return t


def broadcast(t: torch.Tensor, src: int = 0) -> torch.Tensor:
    """Overwrite ``t`` with rank ``src``'s copy (unchanged with one process)."""
    if is_distributed() and dist.get_world_size() > 1:
        dist.broadcast(t, src=src)
    return t


def gather_columns(block: torch.Tensor, lo: int, hi: int, n_total: int) -> torch.Tensor:
    """Assemble the full [n_total, r] tensor from each rank's rows [lo, hi) (an all-reduce of a
    zero-padded copy, so blocks may differ in size)."""
    full = torch.zeros(n_total, block.shape[1], dtype=block.dtype)
    full[lo:hi] = block
    return all_reduce_sum(full)
