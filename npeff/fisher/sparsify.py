"""Dense norms and top-K sparsification of per-example Fisher factors (algorithm.md §1.2–1.4).

All functions work on a batch of examples and return numpy-ready tensors; nothing here grows with
the number of examples n.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from npeff.errors import NpeffUserError


def top_k_indices(scores: torch.Tensor, k: int) -> torch.Tensor:
    """Indices of the ``k`` largest entries of each row of ``scores`` [B, N] → int64 [B, k].

    Exact (same set as ``torch.topk`` up to ties), unordered. ``k`` must be ≤ N.
    """
    n = scores.shape[1]
    if k > n:
        raise NpeffUserError(f"cannot keep {k} values out of {n} entries")
    return top_k(scores, k)[1]


# Below this many entries per kept value torch.topk is as fast as the blocked selection.
_BLOCK_MIN_RATIO = 8


def top_k(
    x: torch.Tensor, k: int, *, absolute: bool = False, sorted: bool = False
) -> tuple[torch.Tensor, torch.Tensor]:
    """The ``k`` largest entries of each row of ``x`` [B, N] (of ``|x|`` with ``absolute``)
    → (scores [B, k], int64 indices [B, k]); descending when ``sorted``, else in no order.

    Exact: the same values as ``torch.topk`` (indices may differ among tied values). Rows are
    cut into N // s blocks of s = √(N/k) entries each (block j: entries j, j + N//s, ...; the last
    N mod s entries are always candidates). Only the k blocks with the largest maxima can hold a
    top-k entry: if t is the k-th largest block maximum, those k maxima are ≥ t, so the k-th
    largest entry v is ≥ t, and every entry ≥ v lies in a block whose maximum is ≥ v ≥ t (a block
    with maximum exactly t left out holds nothing above t, and ≥ k chosen entries are ≥ t). So one
    pass over x (the block maxima), a top-k over N/s maxima and one over k·s candidates replace
    torch.topk's heap over all N (2-3× faster on CPU for N ≫ k). NaN behaves as in torch.topk.
    """
    b, n = x.shape
    s = int(math.sqrt(n / max(k, 1)))
    if k < 1 or n < _BLOCK_MIN_RATIO * k or s < 2:
        scores = x.abs() if absolute else x
        top = torch.topk(scores, k, dim=1, sorted=sorted)
        return top.values, top.indices
    nb = n // s
    blocks = x[:, : nb * s].view(b, s, nb)  # strided blocks: the max is over a leading dim
    maxima = blocks.amax(1)
    if absolute:
        maxima = torch.maximum(maxima, blocks.amin(1).neg_())
    chosen = top_k(maxima, k)[1]  # [B, k]
    idx = (chosen[:, None, :] + nb * torch.arange(s, device=x.device)[:, None]).reshape(b, -1)
    if nb * s < n:
        tail = torch.arange(nb * s, n, device=x.device).expand(b, -1)
        idx = torch.cat([idx, tail], dim=1)
    cand = torch.gather(x, 1, idx)
    if absolute:
        cand = cand.abs_()
    top = torch.topk(cand, k, dim=1, sorted=sorted)
    return top.values, torch.gather(idx, 1, top.indices)


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
        raise NpeffUserError(f"cannot keep {k} values out of {c * m} entries")
    flat = rows.reshape(b, c * m)
    inside = None
    if ranks is not None:
        row_id = torch.arange(c, device=rows.device).repeat_interleave(m)
        inside = row_id[None, :] < ranks[:, None]
        idx = top_k(flat.abs().masked_fill_(~inside, -1.0), k)[1]
    else:
        idx = top_k(flat, k, absolute=True)[1]
    idx = idx.sort(dim=1).values
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
        raise NpeffUserError(f"cannot keep {k} values out of {fisher.shape[1]} parameters")
    values, indices = top_k(fisher, k, sorted=True)
    return SparseDiag(values, indices, fisher.norm(dim=1))
