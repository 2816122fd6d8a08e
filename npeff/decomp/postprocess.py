"""After a decomposition: component normalization and D-NPEFF H sparsification.

LRM (algorithm.md §4.9): g_k ← g_k/(‖g_k‖ + 1e-12), W_:k ← W_:k·(‖g_k‖² + 1e-12) (H_k = g_kg_kᵀ is
quadratic in g_k). D (§6.2): h_k ← h_k/‖h_k‖, W_:k ← W_:k·‖h_k‖ (linear). Both keep Σ_k W_ik H_k.
"""

from __future__ import annotations

import numpy as np
import scipy.sparse as sp

from npeff.errors import NpeffUserError

NORM_EPS = 1e-12


def normalize_components(W: np.ndarray, comps: np.ndarray, *, kind: str):
    """(W [n, r], unit-norm components [r, m']) with the same reconstruction."""
    comps = np.asarray(comps, dtype=np.float64)
    norms = np.linalg.norm(comps, axis=1)
    if kind == "lrm":
        return np.asarray(W) * (norms**2 + NORM_EPS), comps / (norms + NORM_EPS)[:, None]
    safe = np.where(norms > 0, norms, 1.0)
    return np.asarray(W) * norms, comps / safe[:, None]


def sparsify_h(
    H: np.ndarray, *, threshold: float | None = None, keep_fraction: float | None = None
):
    """CSR H [r, m'] keeping entries ≥ ``threshold``, or each row's top ``keep_fraction``."""
    if (threshold is None) == (keep_fraction is None):
        raise NpeffUserError("give exactly one of decomp.h_threshold and decomp.h_keep_fraction")
    H = np.asarray(H)
    if threshold is not None:
        return sp.csr_matrix(np.where(H >= threshold, H, 0.0))
    if not 0.0 < keep_fraction <= 1.0:
        raise NpeffUserError(f"decomp.h_keep_fraction must be in (0, 1], got {keep_fraction}")
    k = max(1, int(round(keep_fraction * H.shape[1])))
    top = np.argpartition(-H, k - 1, axis=1)[:, :k]
    out = np.zeros_like(H)
    np.put_along_axis(out, top, np.take_along_axis(H, top, axis=1), axis=1)
    return sp.csr_matrix(out)


def sparsify_decomposition(
    dec, *, threshold: float | None = None, keep_fraction: float | None = None
):
    """A D-NPEFF ``Decomposition`` with unit-norm components and a sparse (CSR) H (§6.2).

    Components are normalized first (h ← h/‖h‖, W ← W·‖h‖), then thresholded, as the reference's
    ``sparsify_d_npeff`` intends.
    """
    import dataclasses

    if dec.kind != "diag" or dec.H is None:
        raise NpeffUserError("only a D-NPEFF decomposition with H can be sparsified")
    H = dec.H.toarray() if sp.issparse(dec.H) else np.asarray(dec.H)
    W, Hn = normalize_components(dec.W, H, kind="diag")
    Hs = sparsify_h(Hn, threshold=threshold, keep_fraction=keep_fraction)
    meta = {**dec.metadata, "h_threshold": threshold, "h_keep_fraction": keep_fraction}
    return dataclasses.replace(
        dec, W=W.astype(np.float32), H=sp.csr_matrix(Hs, dtype=np.float32), metadata=meta
    )
