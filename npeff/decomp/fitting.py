"""Coefficient fitting: W for a new PEF set with the components (G or H) frozen (algorithm.md §6.3,
§7.1). One entry point for both kinds, dense or sparse H.

Per example chunk (the last chunk holds the n mod chunk_size remaining examples — the reference's
last-chunk bug is not repeated): keep only the decomposition's columns (its index map; no new
pruning), normalize as in the decomposition, compute the cached numerator N once
(LRM: N = rowblock_sum_sq(A Gᵀ); D: A Hᵀ), then run ``n_iters`` multiplicative updates
W ← W ∘ N ⊘ (W·Hm + eps) with the cached Hm (LRM: (GGᵀ)∘(GGᵀ); D: H Hᵀ). W starts at U(0,1]
from one seeded generator that continues across chunks.
"""

from __future__ import annotations

import dataclasses
import math

import numpy as np
import scipy.sparse as sp
import torch
from tqdm.auto import tqdm

from npeff.artifacts.decomposition import Decomposition
from npeff.artifacts.pefs import Pefs
from npeff.decomp import lrm
from npeff.decomp.matrix import ColumnBlocks, build_matrix, check_pef_kind
from npeff.errors import NpeffUserError

DEFAULT_EPS = {"lrm": 1e-9, "diag": 1e-7}


def check_compatible(pefs: Pefs, dec: Decomposition) -> None:
    """Clear errors when ``pefs`` cannot be fitted against ``dec``."""
    check_pef_kind(pefs, dec.kind)
    if pefs.n_parameters != dec.n_parameters:
        raise NpeffUserError(
            f"the PEFs have {pefs.n_parameters} parameters but the decomposition has "
            f"{dec.n_parameters}: they come from different models or parameter selections"
        )
    if dec.kind == "lrm":
        if dec.G is None:
            raise NpeffUserError(
                "the decomposition file stores no G (data/G); it cannot be used to fit"
            )
        # as the reference, PEFs and decomposition agree on n_classes (−1: LVRM on both sides)
        if (pefs.kind == "lvrm") != (dec.n_classes == -1):
            raise NpeffUserError(
                f"the PEFs are {pefs.kind.upper()} PEFs but the decomposition was learned on "
                f"{'LVRM' if dec.n_classes == -1 else 'LRM'} PEFs (n_classes={dec.n_classes}); "
                "fit with PEFs of the kind the decomposition was learned on (fisher=lrm or "
                "fisher=lvrm)"
            )
        if dec.n_classes > 0 and pefs.n_classes != dec.n_classes:
            raise NpeffUserError(
                f"the PEFs have {pefs.n_classes} class rows per example, the decomposition "
                f"{dec.n_classes}; recompute the PEFs with the same classes"
            )
    elif dec.H is None:
        raise NpeffUserError(
            "the decomposition file stores no H (data/H); it cannot be used to fit"
        )


def slice_pefs(p: Pefs, lo: int, hi: int) -> Pefs:
    """Examples [lo, hi) of a ``Pefs`` (every per-example array field is sliced; LVRM also the
    rows' ``col_sizes`` of those examples — not the reference's offset bug, §11.2 item 4)."""
    n = p.n_examples
    changes = {
        f.name: getattr(p, f.name)[lo:hi]
        for f in dataclasses.fields(p)
        if f.name != "col_sizes"
        and isinstance(getattr(p, f.name), np.ndarray)
        and getattr(p, f.name).shape[:1] == (n,)
    }
    if p.kind == "lvrm":
        first = np.concatenate([[0], np.cumsum(p.ranks, dtype=np.int64)])
        changes["col_sizes"] = p.col_sizes[first[lo] : first[hi]]
    return dataclasses.replace(p, **changes)


def fit_coefficients(
    pefs: Pefs,
    dec: Decomposition,
    *,
    n_iters: int,
    mu_eps: float | None = None,
    seed: int = 32497,
    chunk_size: int | None = None,
    dtype: torch.dtype = torch.float32,
    block_cols: int = 262144,
    W_init: np.ndarray | None = None,
    progress: bool = False,
) -> tuple[Decomposition, dict]:
    """Fit W [n, r] for ``pefs`` against ``dec``'s frozen components.

    Returns (a ``Decomposition`` with the new W and the same G/H and index map, info) where info
    holds the final loss (LRM: squared error incl. T; D: ‖A − WH‖_F) and the chunk sizes.
    ``W_init`` replaces the random start (tests: one iteration must equal the joint W update).
    """
    check_compatible(pefs, dec)
    if n_iters < 1:
        raise NpeffUserError(f"fit.n_iters must be ≥ 1, got {n_iters}")
    kind, n, r = dec.kind, pefs.n_examples, dec.n_components
    eps = DEFAULT_EPS[kind] if mu_eps is None else float(mu_eps)
    chunk = n if not chunk_size or chunk_size <= 0 else min(int(chunk_size), n)
    comps = dec.G if kind == "lrm" else dec.H
    sparse_h = sp.issparse(comps)
    if sparse_h:
        H = sp.csr_matrix(comps, dtype=np.float64)
        Hm = torch.from_numpy((H @ H.T).toarray()).to(dtype)
        Ct = None
    else:
        Ct = torch.from_numpy(np.ascontiguousarray(np.asarray(comps, dtype=np.float64).T)).to(dtype)
        S = Ct.T @ Ct
        Hm = S * S if kind == "lrm" else S
    gen = torch.Generator().manual_seed(int(seed) % (2**63))
    W_parts, const_total, cross, n_chunks = [], 0.0, 0.0, 0
    bounds = [(a, min(a + chunk, n)) for a in range(0, n, chunk)]
    for a, b in tqdm(bounds, desc="fit", disable=not progress):
        mat = build_matrix(slice_pefs(pefs, a, b), kind, col_map=dec.new_to_old_col_indices)
        if kind == "lrm":
            blocks = ColumnBlocks(mat.A, 0, mat.n_cols, block_cols=block_cols, dtype=dtype)
            N = lrm.numerator(blocks.mm_t(Ct), b - a, mat.rows)
        elif sparse_h:
            N = torch.from_numpy(np.asarray((mat.A @ H.T).todense())).to(dtype)
        else:
            blocks = ColumnBlocks(mat.A, 0, mat.n_cols, block_cols=block_cols, dtype=dtype)
            N = blocks.mm_t(Ct)
        if W_init is not None:
            W = torch.as_tensor(np.asarray(W_init[a:b]), dtype=dtype).clone()
        else:
            W = (1.0 - torch.rand(b - a, r, generator=gen, dtype=torch.float64)).to(dtype)
        for _ in range(int(n_iters)):
            W = W * N / (W @ Hm + eps)
        W64 = W.double()
        const_total += mat.const
        cross += float(-2.0 * (W64 * N.double()).sum() + ((W64.T @ W64) * Hm.double()).sum())
        W_parts.append(W.double().numpy())
        n_chunks += 1
    W = np.concatenate(W_parts, axis=0) if W_parts else np.zeros((0, r))
    sq = const_total + cross
    final = sq if kind == "lrm" else math.sqrt(max(sq, 0.0))
    out = Decomposition(
        kind=kind,
        W=W.astype(np.float32),
        new_to_old_col_indices=np.asarray(dec.new_to_old_col_indices),
        n_parameters=dec.n_parameters,
        n_classes=dec.n_classes,
        G=dec.G,
        H=dec.H,
        losses={},
        log_loss_frequency=dec.log_loss_frequency,
        layout=pefs.layout if pefs.layout is not None else dec.layout,
        metadata={"fitted": True, "seed": int(seed), "n_iters": int(n_iters), "mu_eps": eps},
    )
    return out, {"final_loss": final, "n_chunks": n_chunks, "chunk_size": chunk}
