"""D-NPEFF update rules as pure functions (algorithm.md §6): Frobenius NMF A ≈ W H, W first.

H is kept transposed, ``Ht`` [m'_p, r] (one rank's column block). A [n, m'] ≥ 0, W [n, r] ≥ 0.
Only A Hᵀ [n, r] and H Hᵀ [r, r] are summed over ranks; the H update is local.
Logged loss (as the reference): the un-squared error ‖A − WH‖_F =
sqrt(‖A‖² − 2⟨W, AHᵀ⟩ + ⟨WᵀW, HHᵀ⟩).
"""

from __future__ import annotations

import math

import torch

from npeff.decomp.lrm import Reduce, no_reduce
from npeff.decomp.matrix import ColumnBlocks


def products(
    blocks: ColumnBlocks, Ht: torch.Tensor, reduce: Reduce = no_reduce
) -> tuple[torch.Tensor, torch.Tensor]:
    """A Hᵀ [n, r] and H Hᵀ [r, r], summed over ranks."""
    return reduce(blocks.mm_t(Ht)), reduce(Ht.T @ Ht)


def w_update(W: torch.Tensor, AHt: torch.Tensor, HHt: torch.Tensor, eps: float) -> torch.Tensor:
    """W ← W ∘ (A Hᵀ) ⊘ (W H Hᵀ + eps)."""
    return W * AHt / (W @ HHt + eps)


def h_update(blocks: ColumnBlocks, Ht: torch.Tensor, W: torch.Tensor, eps: float) -> torch.Tensor:
    """H ← H ∘ (Wᵀ A) ⊘ (WᵀW H + eps), transposed: Hᵀ ∘ (Aᵀ W) ⊘ (Hᵀ WᵀW + eps)."""
    return Ht * blocks.rmm(W) / (Ht @ (W.T @ W) + eps)


def loss(const: float, W: torch.Tensor, AHt: torch.Tensor, HHt: torch.Tensor) -> float:
    """‖A − WH‖_F from ‖A‖² = ``const`` and fresh A Hᵀ, H Hᵀ (float64 accumulation)."""
    W64 = W.double()
    sq = (
        const
        - 2.0 * float((W64 * AHt.double()).sum())
        + float(((W64.T @ W64) * HHt.double()).sum())
    )
    return math.sqrt(max(sq, 0.0))
