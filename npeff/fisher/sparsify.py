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
    row_indices: int [B, K] parameter indices. counts: int [B, C] kept entries per class row
      (LVRM: Σ_c counts ≤ K, the remaining values are explicit-zero padding).
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

    Every example stores exactly K values. An LVRM example with fewer than K entries in its rows
    (ranks[b]·m < K, e.g. rank 0) stores all of them, then K − ranks[b]·m explicit zeros
    (value 0, parameter index 0) that belong to no row: ``counts`` covers only the row entries,
    so the first counts[b].sum() values are the rows' and the rest is padding.
    """
    b, c, m = rows.shape
    if k > c * m:
        raise ValueError(f"cannot keep {k} values out of {c * m} entries")
    flat = rows.reshape(b, c * m)
    scores = flat.abs()
    inside = None
    if ranks is not None:
        row_id = torch.arange(c, device=rows.device).repeat_interleave(m)
        inside = row_id[None, :] < ranks[:, None]
        scores = scores.masked_fill(~inside, -1.0)
    idx = top_k_indices(scores, k).sort(dim=1).values
    values = torch.gather(flat, 1, idx)
    row_indices = idx % m
    cls = idx // m
    ones = torch.ones_like(cls)
    if inside is not None:
        pad = ~torch.gather(inside, 1, idx)  # chosen only when the rows hold fewer than K entries
        values = values.masked_fill(pad, 0.0)
        row_indices = row_indices.masked_fill(pad, 0)
        cls = cls.masked_fill(pad, 0)
        ones = ones.masked_fill(pad, 0)
    counts = torch.zeros(b, c, dtype=torch.long, device=rows.device)
    counts.scatter_add_(1, cls, ones)
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
