"""Perturbation directions for NPEFF components (algorithm.md §8.1 and §8.3)."""

from __future__ import annotations

import numpy as np
import scipy.sparse as sp
import torch

from npeff.artifacts.layout import ParameterLayout
from npeff.errors import NpeffUserError
from npeff.perturb.vector import ParameterVector


class ZeroDirection(NpeffUserError):
    """A component gives no perturbation direction (an all-zero G/H row, or nothing left after
    the rejection); the caller skips that component and records why."""


def normalize_rows(G: np.ndarray) -> np.ndarray:
    """Rows of ``G`` [r, m'] scaled to unit L2 norm (float64); all-zero rows stay zero (their
    component has no direction, see ``lrm_reduced_direction``; they reject nothing)."""
    G = np.asarray(G, dtype=np.float64)
    norms = np.linalg.norm(G, axis=1, keepdims=True)
    return G / np.where(norms > 0, norms, 1.0)


def lrm_reduced_direction(G_unit: np.ndarray, j: int, tau: float | None = 0.35) -> np.ndarray:
    """The LRM perturbation direction for component ``j`` in reduced space, unit norm [m'].

    ``G_unit`` [r, m'] has unit rows. v ← g_j; then for i = 0..r−1 in order, skipping i = j and any
    i with |cos(g_j, g_i)| > τ, v ← v − (v·g_i) g_i (a sequential single pass, not a projection
    onto the orthogonal complement); finally v ← v/‖v‖. ``tau=None`` gives plain g_j.
    """
    r = G_unit.shape[0]
    if not 0 <= j < r:
        raise IndexError(f"component {j} out of range for {r} components")
    if not np.any(G_unit[j]):
        raise ZeroDirection(f"component {j} has an all-zero G row (pseudo-Fisher vector)")
    v = G_unit[j].astype(np.float64, copy=True)
    if tau is not None:
        cos = np.abs(G_unit @ G_unit[j])
        for i in range(r):
            if i == j or cos[i] > tau:
                continue
            v -= (v @ G_unit[i]) * G_unit[i]
    n = np.linalg.norm(v)
    if not n > 0:
        raise ZeroDirection(f"the rejected direction of component {j} is zero")
    return v / n


def lrm_direction(
    G: np.ndarray,
    col_indices: np.ndarray,
    layout: ParameterLayout,
    j: int,
    tau: float | None = 0.35,
    G_unit: np.ndarray | None = None,
) -> ParameterVector:
    """Unit-norm LRM direction for component ``j`` as a full parameter vector [m]."""
    if G_unit is None:
        G_unit = normalize_rows(G)
    return ParameterVector.from_reduced(layout, lrm_reduced_direction(G_unit, j, tau), col_indices)


def h_row(H: np.ndarray | sp.spmatrix, j: int) -> np.ndarray:
    """Row ``j`` of a dense or sparse D-NPEFF ``H`` [r, m'] as a dense float64 [m']."""
    if sp.issparse(H):
        return np.asarray(H.getrow(j).toarray()).reshape(-1).astype(np.float64)
    return np.asarray(H[j], dtype=np.float64)


def unit_dataset_fisher(fisher: np.ndarray, eps: float = 1e-12) -> np.ndarray:
    """The dataset-level diagonal Fisher [m] divided by (‖F̄‖₂ + eps) (algorithm.md §1.5)."""
    fisher = np.asarray(fisher, dtype=np.float64).reshape(-1)
    if np.any(fisher < 0):
        raise NpeffUserError("the dataset-level diagonal Fisher has negative entries")
    return fisher / (np.linalg.norm(fisher) + eps)


def d_merge_delta(
    h_unit: np.ndarray,
    fisher_unit: np.ndarray,
    sign: np.ndarray,
    delta: float,
    lam: float,
    fisher_floor: float = 1e-6,
) -> np.ndarray:
    """The D-NPEFF Fisher-merge perturbation θ' − θ [m] (algorithm.md §8.3).

    Per parameter k, with w1 = (1−λ)·max(F̄_k, floor) and w2 = λ·ĥ_k:
    θ'_k − θ_k = −δ·s_k·w2 / (w1 + w2), and 0 where w1 + w2 = 0.
    ``h_unit``, ``fisher_unit`` [m] are unit-norm and non-negative; ``sign`` [m] is in {−1, 0, 1}.
    """
    w1 = (1.0 - lam) * np.maximum(fisher_unit, fisher_floor)
    w2 = lam * h_unit
    denom = w1 + w2
    frac = np.divide(w2, denom, out=np.zeros_like(denom), where=denom > 0)
    return -delta * sign * frac


def loss_gradient_sign(
    model: torch.nn.Module,
    batches,
    params: dict[str, torch.nn.Parameter],
    layout: ParameterLayout,
    forward_logits,
) -> np.ndarray:
    """s = sign(Σ_x ∇_θ CE(model(x), y)) over the given batches, flattened on ``layout`` [m].

    ``batches`` yields dict batches (``labels`` + model kwargs); the loss is the summed
    cross-entropy with the true labels.
    """
    names = list(layout.names)
    plist = [params[n] for n in names]
    saved = [p.requires_grad for p in plist]
    total = [torch.zeros_like(p, dtype=torch.float64) for p in plist]
    try:
        for p in plist:
            p.requires_grad_(True)
        with torch.enable_grad():
            for batch in batches:
                logits = forward_logits(model, batch)
                loss = torch.nn.functional.cross_entropy(
                    logits.float(), batch["labels"].long(), reduction="sum"
                )
                grads = torch.autograd.grad(loss, plist, allow_unused=True)
                for t, g in zip(total, grads):
                    if g is not None:
                        t += g.double()
    finally:
        for p, s in zip(plist, saved):
            p.requires_grad_(s)
    flat = layout.flatten({n: t.cpu() for n, t in zip(names, total)})
    return torch.sign(flat).numpy()
