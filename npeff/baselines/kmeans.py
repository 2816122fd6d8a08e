"""k-means baselines (paper §3.4): clusters of per-example features as "components".

Fit on the ``fit`` split's features, applied to ``eval`` (nearest centroid). A cluster's score
matrix is non-negative so every analysis of coefficient matrices reads it unchanged:
``score[i, j] = 1 / (1 + dist(x_i, c_j) / s)`` when example i belongs to cluster j and 0 otherwise,
with ``s`` the mean distance of the fit examples to their own centroid. Ranking a cluster's
examples by score is ranking its members by distance to the centroid (the paper's ranking).
For cross-run matching the paper uses 0/1 membership instead (``membership_coefficients``).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import scipy.sparse as sp

from npeff.errors import NpeffUserError


def membership_coefficients(assignments: np.ndarray, n_clusters: int | None = None) -> np.ndarray:
    """0/1 matrix [n, k] with a one at (i, cluster of i): the "coefficients" of a clustering."""
    a = np.asarray(assignments, dtype=np.int64)
    if a.ndim != 1 or (a.size and a.min() < 0):
        raise NpeffUserError("assignments must be a 1-D array of non-negative cluster ids")
    k = int(a.max()) + 1 if n_clusters is None else int(n_clusters)
    if a.size and a.max() >= k:
        raise NpeffUserError(f"cluster id {a.max()} out of range for {k} clusters")
    M = np.zeros((a.size, k), dtype=np.float32)
    M[np.arange(a.size), a] = 1.0
    return M


def check_n_clusters(n_clusters: int, n_examples: int) -> int:
    """``n_clusters`` as an int, or a clear error when it cannot be fitted on ``n_examples``."""
    k = int(n_clusters)
    if k < 1:
        raise NpeffUserError(f"baseline.n_components must be >= 1, got {k}")
    if k > n_examples:
        raise NpeffUserError(
            f"baseline.n_components={k} clusters but the fit split has only {n_examples} "
            "examples; use fewer clusters or more fit examples (task.n_fit / n_examples)"
        )
    return k


@dataclass
class KMeansFit:
    """A fitted clustering: centers [k, d], the distance scale s, and the sklearn model."""

    model: object
    scale: float

    @property
    def n_clusters(self) -> int:
        return int(self.model.n_clusters)

    def distances(self, X) -> np.ndarray:
        """float64 [n, k] Euclidean distances to every centroid."""
        return np.asarray(self.model.transform(X), dtype=np.float64)

    def apply(self, X) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(assignments int [n], scores float [n, k], membership 0/1 [n, k]) of features X."""
        dist = self.distances(X)
        assign = dist.argmin(axis=1)
        member = membership_coefficients(assign, self.n_clusters)
        scores = member / (1.0 + dist / self.scale)
        return assign.astype(np.int64), scores.astype(np.float32), member


def fit_kmeans(
    X, n_clusters: int, seed: int = 0, n_init: int = 4, max_iter: int = 300
) -> KMeansFit:
    """scikit-learn k-means (Lloyd) on features X [n, d] (dense or scipy sparse)."""
    from sklearn.cluster import KMeans

    k = check_n_clusters(n_clusters, X.shape[0])
    X = X if sp.issparse(X) else np.asarray(X, dtype=np.float64)
    km = KMeans(n_clusters=k, random_state=int(seed), n_init=int(n_init), max_iter=int(max_iter))
    km.fit(X)
    own = np.asarray(km.transform(X))[np.arange(X.shape[0]), km.labels_]
    scale = float(own.mean())
    return KMeansFit(model=km, scale=scale if scale > 0 else 1.0)
