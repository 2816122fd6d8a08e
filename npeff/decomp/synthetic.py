"""Synthetic PEF sets with planted components (tests, benches, demos). No model involved.

``planted_lrm_pefs``: each class row of example i is a_ic·g_k(i,c) + noise, with distinct planted
g_k per row, so F_i ≈ Σ_c a²_ic g_k g_kᵀ is a non-negative combination of rank-1 components.
(``npeff.fisher.synthetic.planted_lvrm_pefs`` makes LVRM sets: their sparsification is the PEF
computation's own, which this package does not use.)
``planted_diag_pefs``: f_i = Σ_k W_ik h_k + noise with non-negative sparse h_k and W.
Both keep the top-K entries like the PEF computation (algorithm.md §1.2, §1.3) and store the
dense norms.
"""

from __future__ import annotations

import numpy as np

from npeff.artifacts.pefs import Pefs


def lrm_pefs_from_dense(A: np.ndarray, K: int) -> Pefs:
    """LRM ``Pefs`` from dense factors A [n, C, m]: top-K |value| over all class rows,
    flat indices sorted (class-major), dense ‖A_iᵀA_i‖_F as the norms."""
    n, C, m = A.shape
    flat = A.reshape(n, C * m)
    top = np.argpartition(-np.abs(flat), K - 1, axis=1)[:, :K]
    top.sort(axis=1)
    values = np.take_along_axis(flat, top, axis=1).astype(np.float32)
    cls = top // m
    offsets = np.zeros((n, C + 1), dtype=np.int32)
    for c in range(C):
        offsets[:, c + 1] = offsets[:, c] + (cls == c).sum(1)
    gram = np.einsum("icm,idm->icd", A.astype(np.float64), A.astype(np.float64))
    norms = np.sqrt((gram**2).sum((1, 2))).astype(np.float32)
    return Pefs(
        kind="lrm",
        values=values,
        indices=(top % m).astype(np.int32),
        norms=norms,
        labels=np.zeros(n, dtype=np.int64),
        logits=np.zeros((n, C), dtype=np.float32),
        n_parameters=m,
        col_offsets=offsets,
    )


def diag_pefs_from_dense(F: np.ndarray, K: int) -> Pefs:
    """D ``Pefs`` from dense non-negative F [n, m]: top-K values (descending), ‖f_i‖₂ norms."""
    n, m = F.shape
    top = np.argpartition(-F, K - 1, axis=1)[:, :K]
    vals = np.take_along_axis(F, top, axis=1)
    order = np.argsort(-vals, axis=1, kind="stable")
    return Pefs(
        kind="diag",
        values=np.take_along_axis(vals, order, axis=1).astype(np.float32),
        indices=np.take_along_axis(top, order, axis=1).astype(np.int32),
        norms=np.linalg.norm(F.astype(np.float64), axis=1).astype(np.float32),
        labels=np.zeros(n, dtype=np.int64),
        logits=np.zeros((n, 1), dtype=np.float32),
        n_parameters=m,
    )


def planted_lrm_pefs(
    n: int, m: int, C: int, r: int, K: int, *, noise: float = 0.01, seed: int = 0
) -> tuple[Pefs, np.ndarray]:
    """(Pefs, planted G [r, m] with unit rows). Requires C ≤ r."""
    rng = np.random.default_rng(seed)
    G = rng.standard_normal((r, m))
    G /= np.linalg.norm(G, axis=1, keepdims=True)
    A = np.empty((n, C, m))
    for i in range(n):
        ks = rng.choice(r, size=C, replace=False)
        a = rng.uniform(0.2, 1.0, size=C)
        A[i] = a[:, None] * G[ks] + noise * rng.standard_normal((C, m)) / np.sqrt(m)
    return lrm_pefs_from_dense(A, K), G


def planted_diag_pefs(
    n: int, m: int, r: int, K: int, *, density: float = 0.3, noise: float = 0.0, seed: int = 0
) -> tuple[Pefs, np.ndarray, np.ndarray]:
    """(Pefs, planted W [n, r], planted H [r, m]) with non-negative sparse factors."""
    rng = np.random.default_rng(seed)
    H = rng.uniform(0.1, 1.0, (r, m)) * (rng.random((r, m)) < density)
    W = rng.uniform(0.0, 1.0, (n, r)) * (rng.random((n, r)) < 0.5)
    W[np.arange(n), rng.integers(0, r, n)] += 1.0  # no empty rows
    F = W @ H + noise * rng.random((n, m))
    return diag_pefs_from_dense(F, K), W, H


def random_lrm_pefs(n: int, m: int, C: int, K: int, *, seed: int = 0) -> Pefs:
    """Large random LRM PEFs built directly in sparse form (benches): K random distinct-ish
    parameter indices per example spread over C class rows, Gaussian values, random norms."""
    rng = np.random.default_rng(seed)
    per = np.full(C, K // C)
    per[: K % C] += 1
    offsets = np.concatenate([[0], np.cumsum(per)]).astype(np.int32)
    idx = np.empty((n, K), dtype=np.int32)
    for c in range(C):
        block = rng.integers(0, m, size=(n, per[c]), dtype=np.int64)
        block.sort(axis=1)
        idx[:, offsets[c] : offsets[c + 1]] = block
    vals = rng.standard_normal((n, K), dtype=np.float32)
    return Pefs(
        kind="lrm",
        values=vals,
        indices=idx,
        norms=rng.uniform(0.5, 2.0, n).astype(np.float32),
        labels=np.zeros(n, dtype=np.int64),
        logits=np.zeros((n, C), dtype=np.float32),
        n_parameters=m,
        col_offsets=np.tile(offsets, (n, 1)),
    )


def random_diag_pefs(n: int, m: int, K: int, *, seed: int = 0) -> Pefs:
    """Large random D-PEFs in sparse form (benches): K distinct indices per example."""
    rng = np.random.default_rng(seed)
    idx = np.stack([rng.choice(m, size=K, replace=False) for _ in range(n)]).astype(np.int32)
    vals = -np.sort(-rng.exponential(1.0, size=(n, K)).astype(np.float32), axis=1)
    return Pefs(
        kind="diag",
        values=vals,
        indices=idx,
        norms=(np.linalg.norm(vals, axis=1) * rng.uniform(1.0, 1.5, n)).astype(np.float32),
        labels=np.zeros(n, dtype=np.int64),
        logits=np.zeros((n, 1), dtype=np.float32),
        n_parameters=m,
    )
