"""Cross-run component matching by coefficient vectors (paper §3.3).

Two runs over the same n examples give coefficient matrices W_a [n, r_a] and W_b [n, r_b]. A
component is represented by its coefficient column. The paper's similarity of two runs is the
average, over the components of one run, of each component's max cosine similarity to any
component of the other run, reported in both directions. For runs with different component
counts, each component j of the larger run is assigned to the component i of the smaller run it
is most similar to; the group of larger-run components assigned to i are the "splits" of i.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from npeff.analysis.controls import shuffled_control
from npeff.errors import NpeffUserError


def _unit_columns(W: np.ndarray) -> np.ndarray:
    W = np.asarray(W, dtype=np.float64)
    if W.ndim != 2:
        raise NpeffUserError(
            f"coefficients must be 2-D [n_examples, n_components], got shape {W.shape}"
        )
    norms = np.linalg.norm(W, axis=0)
    # A component with an all-zero column has cosine 0 to everything.
    return W / np.where(norms > 0, norms, 1.0)


def coefficient_cosine(W_a: np.ndarray, W_b: np.ndarray) -> np.ndarray:
    """Cosine similarity between the coefficient columns of two runs.

    Args:
      W_a: [n, r_a]. W_b: [n, r_b], over the same n examples in the same order.
    Returns:
      float64 [r_a, r_b]; entry (i, j) = cos(W_a[:, i], W_b[:, j]); 0 for all-zero columns.
    """
    W_a, W_b = np.asarray(W_a), np.asarray(W_b)
    if W_a.ndim != 2 or W_b.ndim != 2:
        raise NpeffUserError(f"coefficients must be 2-D, got shapes {W_a.shape} and {W_b.shape}")
    if W_a.shape[0] != W_b.shape[0]:
        raise NpeffUserError(
            f"the runs cover different numbers of examples ({W_a.shape[0]} vs {W_b.shape[0]}); "
            "compare coefficient files fitted on the same examples (npeff-fit on one PEF file)"
        )
    return _unit_columns(W_a).T @ _unit_columns(W_b)


def average_max_cosine(W_a: np.ndarray, W_b: np.ndarray) -> tuple[float, float]:
    """(mean over a's components of their max cosine to b, the same from b to a)."""
    cos = coefficient_cosine(W_a, W_b)
    return float(cos.max(axis=1).mean()), float(cos.max(axis=0).mean())


@dataclass
class MatchResult:
    """Matching of run a (r_a components) against run b (r_b components).

    Fields:
      cosine: float [r_a, r_b]. a_to_b / b_to_a: average max cosine in each direction.
      best_b_for_a: int [r_a] argmax over b for each a component; best_a_for_b: int [r_b].
      max_cos_a / max_cos_b: float [r_a] / [r_b] the corresponding maxima.
      splits: when r_a != r_b, {smaller-run component: [larger-run components assigned to it]};
        ``smaller`` names the smaller run ("a" or "b"); None when the counts are equal.
    """

    cosine: np.ndarray
    a_to_b: float
    b_to_a: float
    best_b_for_a: np.ndarray
    best_a_for_b: np.ndarray
    max_cos_a: np.ndarray
    max_cos_b: np.ndarray
    splits: dict[int, list[int]] | None
    smaller: str | None

    def to_dict(self) -> dict:
        d = {
            "n_components_a": int(self.cosine.shape[0]),
            "n_components_b": int(self.cosine.shape[1]),
            "avg_max_cos_a_to_b": self.a_to_b,
            "avg_max_cos_b_to_a": self.b_to_a,
            "avg_max_cos_mean": 0.5 * (self.a_to_b + self.b_to_a),
            "best_b_for_a": self.best_b_for_a.tolist(),
            "best_a_for_b": self.best_a_for_b.tolist(),
            "max_cos_a": self.max_cos_a.tolist(),
            "max_cos_b": self.max_cos_b.tolist(),
        }
        if self.splits is not None:
            d["smaller_run"] = self.smaller
            d["splits"] = {str(k): v for k, v in self.splits.items()}
            d["n_smaller_with_split"] = int(sum(len(v) > 0 for v in self.splits.values()))
        return d


def component_splits(W_small: np.ndarray, W_large: np.ndarray) -> dict[int, list[int]]:
    """Which components of the larger run split each component of the smaller one.

    Each larger-run component j goes to the smaller-run component i with the highest coefficient
    cosine (paper §3.3: "the subset of run B's components whose coefficient cosine similarity to
    component i was greater than to any other of run A's components"). Ties go to the lower i.

    Returns:
      {i: sorted list of larger-run components assigned to i} for every i of the smaller run
      (possibly empty lists).
    """
    cos = coefficient_cosine(W_small, W_large)  # [r_small, r_large]
    owner = cos.argmax(axis=0)
    return {i: np.flatnonzero(owner == i).tolist() for i in range(cos.shape[0])}


def match_runs(W_a: np.ndarray, W_b: np.ndarray) -> MatchResult:
    """Full matching of two runs' coefficient matrices; see ``MatchResult``."""
    cos = coefficient_cosine(W_a, W_b)
    r_a, r_b = cos.shape
    splits, smaller = None, None
    if r_a < r_b:
        splits, smaller = component_splits(W_a, W_b), "a"
    elif r_b < r_a:
        splits, smaller = component_splits(W_b, W_a), "b"
    return MatchResult(
        cosine=cos,
        a_to_b=float(cos.max(axis=1).mean()),
        b_to_a=float(cos.max(axis=0).mean()),
        best_b_for_a=cos.argmax(axis=1),
        best_a_for_b=cos.argmax(axis=0),
        max_cos_a=cos.max(axis=1),
        max_cos_b=cos.max(axis=0),
        splits=splits,
        smaller=smaller,
    )


def component_similarity(vectors: np.ndarray) -> np.ndarray:
    """|cos| between the rows of a component matrix (G or H rows, or W columns transposed).

    Args:
      vectors: [r, d] dense array or scipy sparse matrix.
    Returns:
      float64 [r, r] with ones on the diagonal for non-zero rows.
    """
    import scipy.sparse as sp

    if sp.issparse(vectors):
        V = sp.csr_matrix(vectors, dtype=np.float64)
        gram = np.asarray((V @ V.T).todense())
    else:
        V = np.asarray(vectors, dtype=np.float64)
        gram = V @ V.T
    norms = np.sqrt(np.clip(np.diag(gram), 0, None))
    denom = np.outer(norms, norms)
    return np.abs(np.divide(gram, denom, out=np.zeros_like(gram), where=denom > 0))


def shuffled_average_max_cosine(
    W_a: np.ndarray, W_b: np.ndarray, n_shuffles: int = 5, seed: int = 0
) -> tuple[float, float]:
    """Null reference for ``average_max_cosine``: the same with W_b's rows (examples) permuted.

    Unrelated runs with the same coefficient sparsity land here, so a reported similarity is
    read against it. Returns the means over ``n_shuffles`` seeded permutations (a→b, b→a).
    """
    W_b = np.asarray(W_b)
    control = shuffled_control(
        lambda perm: np.asarray(average_max_cosine(W_a, W_b[perm])),
        W_b.shape[0],
        n_shuffles,
        seed,
        observed=np.full(2, np.nan),  # only the null is asked for
    )
    if control.n_shuffles == 0:
        return float("nan"), float("nan")
    a2b, b2a = control.mean()
    return float(a2b), float(b2a)
