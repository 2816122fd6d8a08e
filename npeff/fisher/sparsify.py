"""Dense norms and top-K sparsification of per-example Fisher factors (algorithm.md §1.2–1.4).

All functions work on a batch of examples and return numpy-ready tensors; nothing here grows with
the number of examples n.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


def top_k_indices(scores: torch.Tensor, k: int) -> torch.Tensor:
    """Indices of the ``k`` largest entries of each row of ``scores`` [B, N] → int64 [B, k].

    Exact (same set as ``torch.topk`` up to ties), unordered. ``k`` must be ≤ N.
    """
    n = scores.shape[1]
    if k > n:
        raise ValueError(f"cannot keep {k} values out of {n} entries")
    return torch.topk(scores, k, dim=1, sorted=False).indices


def gram_frobenius_norms(rows: torch.Tensor) -> torch.Tensor:
    """‖AᵢᵀAᵢ‖_F for rows [B, C, m] via the C×C Gram matrix Mᵢ = AᵢAᵢᵀ → [B]."""
    gram = torch.bmm(rows, rows.transpose(1, 2))
    return gram.pow(2).sum(dim=(1, 2)).sqrt()


@dataclass
class SparseRows:
    """Sparsified class rows of a batch (B examples, K values each).

    values: [B, K] signed, grouped by row, ascending parameter index within a row.
    row_indices: int [B, K] parameter indices. counts: int [B, C] kept entries per class row.
    norms: [B] dense Frobenius norms of the PEFs.
    """

    values: torch.Tensor
    row_indices: torch.Tensor
    counts: torch.Tensor
    norms: torch.Tensor


def sparsify_rows(rows: torch.Tensor, k: int, ranks: torch.Tensor | None = None) -> SparseRows:
    """Top-K over all class rows of each example by |value| (LRM, LVRM).

    rows: [B, C, m], row c of example b is sqrt(p_c)·∇log p_c (zero rows past the rank).
    ranks: int [B] or None. With ranks, only the first ``ranks[b]`` rows of example b compete
    (LVRM); entries of later rows are never chosen. Flat index = c·m + j, sorted ascending.
    """
    b, c, m = rows.shape
    flat = rows.reshape(b, c * m)
    scores = flat.abs()
    if ranks is not None:
        row_id = torch.arange(c, device=rows.device).repeat_interleave(m)
        outside = row_id[None, :] >= ranks[:, None]
        scores = scores.masked_fill(outside, -1.0)
        if int(ranks.min()) * m < k:
            raise ValueError(
                f"an example of rank {int(ranks.min())} has only {int(ranks.min()) * m} entries, "
                f"fewer than n_values={k}: lower fisher.n_values"
            )
    idx = top_k_indices(scores, k).sort(dim=1).values
    values = torch.gather(flat, 1, idx)
    row_indices = idx % m
    cls = idx // m
    counts = torch.zeros(b, c, dtype=torch.long, device=rows.device)
    counts.scatter_add_(1, cls, torch.ones_like(cls))
    return SparseRows(values, row_indices, counts, gram_frobenius_norms(rows))


@dataclass
class SparseDiag:
    """Sparsified diagonal PEFs: values [B, K] descending (≥ 0), indices int [B, K], norms [B]."""

    values: torch.Tensor
    indices: torch.Tensor
    norms: torch.Tensor


def sparsify_diag(fisher: torch.Tensor, k: int) -> SparseDiag:
    """Top-K of dense diagonal Fishers ``fisher`` [B, m] (non-negative), values descending."""
    if k > fisher.shape[1]:
        raise ValueError(f"cannot keep {k} values out of {fisher.shape[1]} parameters")
    top = torch.topk(fisher, k, dim=1, sorted=True)
    return SparseDiag(top.values, top.indices, fisher.norm(dim=1))
