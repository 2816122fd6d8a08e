"""Baselines to compare NPEFF components with (paper §3.4): k-means clusters as "components".

The paper clusters activations with k-means, ranks a cluster's examples by distance to its
centroid, and compares clusters with NPEFF components by the average max cosine similarity of
coefficient vectors, using a 0/1 cluster-membership vector as a cluster's "coefficients". The
activations come from the caller (this package never runs a model).
"""

from __future__ import annotations

import numpy as np


def membership_coefficients(assignments: np.ndarray, n_clusters: int | None = None) -> np.ndarray:
    """0/1 matrix [n, k] with a one at (i, cluster of i): the "coefficients" of a clustering."""
    a = np.asarray(assignments, dtype=np.int64)
    if a.ndim != 1 or (a.size and a.min() < 0):
        raise ValueError("assignments must be a 1-D array of non-negative cluster ids")
    k = int(a.max()) + 1 if n_clusters is None else int(n_clusters)
    if a.size and a.max() >= k:
        raise ValueError(f"cluster id {a.max()} out of range for {k} clusters")
    M = np.zeros((a.size, k), dtype=np.float32)
    M[np.arange(a.size), a] = 1.0
    return M


def kmeans_baseline(
    features: np.ndarray, n_clusters: int, seed: int = 0
) -> tuple[np.ndarray, np.ndarray]:
    """k-means on per-example features [n, d] (``npeff.baselines.kmeans``, fitted and applied on
    the same examples).

    Returns:
      assignments int [n]; scores float [n, k], non-negative, zero outside an example's cluster
      and decreasing with the distance to the centroid inside it, so ``top_indices`` ranks each
      cluster's examples by closeness to its centroid (the paper's ranking).
    """
    from npeff.baselines.kmeans import fit_kmeans

    assign, scores, _ = fit_kmeans(features, n_clusters, seed=seed).apply(features)
    return assign, scores
