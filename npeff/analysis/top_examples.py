"""Top examples per component: the examples with the largest coefficients W[:, j]."""

from __future__ import annotations

import numpy as np

from npeff.errors import NpeffUserError


def _check_W(W: np.ndarray) -> np.ndarray:
    W = np.asarray(W)
    if W.ndim != 2:
        raise NpeffUserError(
            f"coefficients W must be a 2-D array [n_examples, n_components], got shape {W.shape}"
        )
    if W.shape[0] == 0 or W.shape[1] == 0:
        raise NpeffUserError(f"coefficients W is empty (shape {W.shape}); nothing to analyse")
    return W


def top_indices(W: np.ndarray, k: int) -> np.ndarray:
    """Indices of the top-k examples of every component, by descending coefficient.

    Args:
      W: [n, r] coefficients. k: number of top examples (clipped to n).
    Returns:
      int64 [r, min(k, n)]; row j lists the examples with the largest W[:, j], largest first.
      Ties are broken by the lower example index (a stable sort), so the result is deterministic.
      A NaN coefficient ranks below every number (a diverged column still yields k rows).
    """
    W = _check_W(W)
    if np.issubdtype(W.dtype, np.floating) and np.isnan(W).any():
        W = np.where(np.isnan(W), -np.inf, W)
    if k < 1:
        raise NpeffUserError(f"top-k must be >= 1, got {k}")
    n, r = W.shape
    k = min(int(k), n)
    if 4 * k >= n:
        # Stable argsort of −W keeps ascending example order among equal coefficients.
        return np.argsort(-W, axis=0, kind="stable")[:k].T.astype(np.int64)
    # Large n: partition to find each column's k-th largest value, then take everything above it
    # plus the lowest-index examples equal to it, so ties resolve exactly as the stable sort.
    WT = np.ascontiguousarray(W.T)  # [r, n]: rows are contiguous, partitioning is faster
    part = np.argpartition(-WT, k - 1, axis=1)[:, :k]  # [r, k], unordered
    kth = np.take_along_axis(WT, part, axis=1).min(axis=1)  # [r]
    out = np.empty((r, k), dtype=np.int64)
    for j in range(r):
        col = WT[j]
        above = np.flatnonzero(col > kth[j])
        equal = np.flatnonzero(col == kth[j])[: k - above.size]
        idx = np.concatenate([above, equal])
        out[j] = idx[np.lexsort((idx, -col[idx]))]
    return out


def top_examples(W: np.ndarray, component: int, k: int) -> list[tuple[int, float]]:
    """[(example index, coefficient)] of one component's top-k examples, largest first."""
    W = _check_W(W)
    if not 0 <= component < W.shape[1]:
        raise IndexError(f"component {component} out of range [0, {W.shape[1]})")
    idx = top_indices(W[:, [component]], k)[0]
    return [(int(i), float(W[i, component])) for i in idx]


def pef_norm_ratio(
    W: np.ndarray,
    norms: np.ndarray,
    n_top: int = 128,
    n_baseline: int = 10_000,
    seed: int = 0,
    baseline_indices: np.ndarray | None = None,
) -> np.ndarray:
    """Per-component PEF-norm ratio: mean norm over its top examples / mean over a baseline set.

    The paper's confound check for KL ratios (§3.1.2, Fig. 3). The baseline is a seeded random
    subset of up to ``n_baseline`` examples unless ``baseline_indices`` is given.

    Args:
      W: [n, r] coefficients. norms: [n] dense PEF norms (Frobenius for LRM, L2 for D).
    Returns:
      float64 [r].
    """
    W = _check_W(W)
    norms = np.asarray(norms, dtype=np.float64)
    if norms.shape != (W.shape[0],):
        raise NpeffUserError(
            f"PEF norms have shape {norms.shape} but W has {W.shape[0]} examples; "
            "use the PEF file the coefficients were fitted on"
        )
    if baseline_indices is None:
        rng = np.random.default_rng(seed)
        n_base = min(n_baseline, W.shape[0])
        baseline_indices = np.sort(rng.choice(W.shape[0], size=n_base, replace=False))
    base = norms[np.asarray(baseline_indices)].mean()
    if base <= 0:
        raise NpeffUserError("the baseline examples all have zero PEF norm; cannot form a ratio")
    top = top_indices(W, n_top)
    return norms[top].mean(axis=1) / base
