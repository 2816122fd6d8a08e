"""LRM-NPEFF update rules as pure functions (algorithm.md §4, §7).

All functions work on one rank's column block and take G *transposed*: ``Gt`` [m'_p, r], so that
A·Gᵀ reads contiguous rows. ``reduce`` sums a tensor over ranks (identity with one process).
Shapes: n examples, C class rows each, r components; P = A Gᵀ [n·C, r]; S = G Gᵀ [r, r];
N [n, r] with N_ik = Σ_c P²_(i,c)k = g_kᵀ F̃_i g_k; W [n, r] ≥ 0.
LVRM (variable rank R_i, §5.2): ``C`` is instead the example of each of the Σ_i R_i rows
(``Rows``), and the per-example sums run over those rows (segmented sums, ``index_add_``).

Loss (never forming an m×m matrix): L = T − 2⟨W, N⟩ + ⟨WᵀW, S∘S⟩.
Gradients: ∂L/∂W = −2N + 2W(S∘S);  ∂L/∂G = 4[(WᵀW∘S)G − QᵀA], Q = W broadcast ∘ P.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from npeff.decomp.matrix import ColumnBlocks

Reduce = Callable[[torch.Tensor], torch.Tensor]
Rows = int | torch.Tensor
"""Rows of each example: C (a fixed count, rows i·C … i·C + C − 1) or, for variable ranks, the
example of each row, int64 [n_rows] (non-decreasing; ``PefMatrix.rows``)."""


def no_reduce(t: torch.Tensor) -> torch.Tensor:
    return t


def products(
    blocks: ColumnBlocks, Gt: torch.Tensor, reduce: Reduce = no_reduce
) -> tuple[torch.Tensor, torch.Tensor]:
    """P = A Gᵀ [n·C, r] and S = G Gᵀ [r, r], both summed over ranks."""
    P = reduce(blocks.mm_t(Gt))
    S = reduce(Gt.T @ Gt)
    return P, S


def numerator(P: torch.Tensor, n: int, C: Rows) -> torch.Tensor:
    """N [n, r]: the sum of P² over each example's rows (C contiguous ones, or per ``C`` ids)."""
    if isinstance(C, int):
        return P.view(n, C, -1).square().sum(1)
    return torch.zeros(n, P.shape[1], dtype=P.dtype).index_add_(0, C, P.square())


def broadcast_rows(P: torch.Tensor, W: torch.Tensor, n: int, C: Rows) -> torch.Tensor:
    """Q = P ∘ (W broadcast over each example's rows) [n_rows, k] for P [n_rows, k], W [n, k]."""
    k = P.shape[1]
    if isinstance(C, int):
        return (P.view(n, C, k) * W[:, None, :]).reshape(n * C, k)
    return P * W.index_select(0, C)


def w_update(
    W: torch.Tensor, N: torch.Tensor, S: torch.Tensor, eps: float = 1e-9, n_cols: int | None = None
) -> torch.Tensor:
    """Multiplicative update W ← W ∘ N ⊘ (W(S∘S) + eps); returns the new W.

    n_cols: update only the first ``n_cols`` columns (expansion-only phase), others unchanged.
    """
    D = W @ (S * S)
    if n_cols is None:
        return W * N / (D + eps)
    out = W.clone()
    out[:, :n_cols] = W[:, :n_cols] * N[:, :n_cols] / (D[:, :n_cols] + eps)
    return out


def g_gradient_t(
    blocks: ColumnBlocks,
    Gt: torch.Tensor,
    W: torch.Tensor,
    P: torch.Tensor,
    S: torch.Tensor,
    n: int,
    C: Rows,
    n_rows: int | None = None,
) -> torch.Tensor:
    """The exact gradient ∂L/∂G for the first ``n_rows`` rows of G (all by default), transposed:
    4[Gᵀ(WᵀW∘S)[:, :n_rows] − Aᵀ Q[:, :n_rows]], shape [m'_p, n_rows].

    The other rows of G (frozen in an expansion) still enter through S and Gᵀ.
    """
    r = W.shape[1]
    k = r if n_rows is None else n_rows
    M = (W.T @ W[:, :k]) * S[:, :k]  # [r, k]
    Q = broadcast_rows(P[:, :k], W[:, :k], n, C)
    return 4.0 * (Gt @ M - blocks.rmm(Q))


def g_step_t(
    blocks: ColumnBlocks,
    Gt: torch.Tensor,
    W: torch.Tensor,
    P: torch.Tensor,
    S: torch.Tensor,
    n: int,
    C: Rows,
    lr: float,
    ortho_strength: float = 0.0,
) -> torch.Tensor:
    """One gradient step on all of G, fused: returns Gᵀ − η·(∂L/∂G + ortho gradient)ᵀ.

    With R = AᵀQ and M = WᵀW∘S (+ s(S − (2/r)I)): Gᵀ − 4η(GᵀM − R) = Gᵀ(I − 4ηM) + 4ηR, one
    GEMM accumulated onto R (no [m', r] temporaries besides R).
    """
    r = W.shape[1]
    M = (W.T @ W) * S
    if ortho_strength > 0:
        M = M + ortho_strength * (S - (2.0 / r) * torch.eye(r, dtype=S.dtype))
    R = blocks.rmm(broadcast_rows(P, W, n, C))
    step = torch.eye(r, dtype=M.dtype) - (4.0 * lr) * M
    return torch.addmm(R, Gt, step, beta=4.0 * lr, alpha=1.0)


def ortho_gradient_t(Gt: torch.Tensor, S: torch.Tensor, strength: float) -> torch.Tensor:
    """Gradient of s·‖GGᵀ − (2/r)I‖²_F, transposed: 4s·Gᵀ(S − (2/r)I), shape [m'_p, r]."""
    r = S.shape[0]
    target = 2.0 / r
    return 4.0 * strength * (Gt @ (S - target * torch.eye(r, dtype=S.dtype)))


def loss(const: float, W: torch.Tensor, N: torch.Tensor, S: torch.Tensor) -> float:
    """L = T − 2⟨W, N⟩ + ⟨WᵀW, S∘S⟩, accumulated in float64."""
    W64, N64, S64 = W.double(), N.double(), S.double()
    return float(const - 2.0 * (W64 * N64).sum() + ((W64.T @ W64) * (S64 * S64)).sum())


def init_w(n: int, r: int, seed: int, dtype: torch.dtype) -> torch.Tensor:
    """W ~ U(0, 1] [n, r] from a generator seeded with ``seed``."""
    gen = torch.Generator().manual_seed(int(seed) % (2**63))
    return (1.0 - torch.rand(n, r, generator=gen, dtype=torch.float64)).to(dtype)


INIT_CHUNK = 65536


def init_columns(
    lo: int,
    hi: int,
    r: int,
    seed: int,
    dtype: torch.dtype,
    *,
    std: float | None = None,
    stream: int = 1,
) -> torch.Tensor:
    """Rows [lo, hi) of a seeded random Gᵀ [m', r]: N(0, std²) if ``std`` is given, else U(0, 1].

    Drawn in fixed chunks of columns with one seeded stream per chunk, so every column gets the
    same value whatever the rank layout (2 processes == 1 process).
    """
    out = torch.empty(hi - lo, r, dtype=torch.float64)
    first, last = lo // INIT_CHUNK, (hi - 1) // INIT_CHUNK if hi > lo else lo // INIT_CHUNK - 1
    for c in range(first, last + 1):
        gen = torch.Generator().manual_seed((int(seed) * 1_000_003 + stream * 7919 + c) % (2**63))
        a, b = c * INIT_CHUNK, (c + 1) * INIT_CHUNK
        if std is None:
            chunk = 1.0 - torch.rand(INIT_CHUNK, r, generator=gen, dtype=torch.float64)
        else:
            chunk = torch.randn(INIT_CHUNK, r, generator=gen, dtype=torch.float64) * std
        s, e = max(a, lo), min(b, hi)
        out[s - lo : e - lo] = chunk[s - a : e - a]
    return out.to(dtype)
