"""Synthetic LVRM PEF sets with planted components (tests, benches). No model involved.

``planted_lvrm_pefs``: like ``npeff.decomp.synthetic.planted_lrm_pefs`` with a variable number of
rows per example (rank 0 included), sparsified by the PEF computation's own
``sparsify_rows`` (which is why this lives in ``fisher/``: ``decomp/`` does not use ``fisher/``).
"""

from __future__ import annotations

import numpy as np
import torch

from npeff.artifacts.pefs import Pefs
from npeff.fisher.sparsify import sparsify_rows


def lvrm_pefs_from_dense(A: np.ndarray, ranks: np.ndarray, K: int) -> Pefs:
    """LVRM ``Pefs`` from dense factors A [n, R_max, m] whose rows past ``ranks`` [n] are unused:
    the PEF computation's own sparsification (``fisher.sparsify.sparsify_rows``: top-K |value|
    over each example's R_i rows, explicit zeros when R_i·m < K) and dense Gram norms."""
    n, c, m = A.shape
    ranks = np.asarray(ranks, dtype=np.int64)
    rows = torch.from_numpy(np.asarray(A, dtype=np.float64).copy())
    rows[torch.arange(c)[None, :] >= torch.from_numpy(ranks)[:, None]] = 0.0
    sp = sparsify_rows(rows, K, torch.from_numpy(ranks))
    counts = sp.counts.numpy()
    return Pefs(
        kind="lvrm",
        values=sp.values.numpy().astype(np.float32),
        indices=sp.row_indices.numpy().astype(np.int32),
        norms=sp.norms.numpy().astype(np.float32),
        labels=np.zeros(n, dtype=np.int64),
        logits=np.zeros((n, c), dtype=np.float32),
        n_parameters=m,
        ranks=ranks.astype(np.int32),
        col_sizes=np.concatenate([counts[i, : ranks[i]] for i in range(n)]).astype(np.int32),
        min_prob_class=0.0,
    )


def planted_lvrm_pefs(
    n: int,
    m: int,
    max_rank: int,
    r: int,
    K: int,
    *,
    p_rank0: float = 0.1,
    noise: float = 0.01,
    seed: int = 0,
) -> tuple[Pefs, np.ndarray]:
    """(LVRM Pefs, planted G [r, m] with unit rows): example i has rank R_i, 0 with probability
    ``p_rank0``, else uniform in 1..max_rank; its rows are a_ic·g_k(i,c) + noise with distinct
    planted g_k. Requires max_rank ≤ r."""
    rng = np.random.default_rng(seed)
    G = rng.standard_normal((r, m))
    G /= np.linalg.norm(G, axis=1, keepdims=True)
    ranks = np.where(rng.random(n) < p_rank0, 0, rng.integers(1, max_rank + 1, size=n))
    A = np.zeros((n, max_rank, m))
    for i in range(n):
        ks = rng.choice(r, size=ranks[i], replace=False)
        a = rng.uniform(0.2, 1.0, size=ranks[i])
        A[i, : ranks[i]] = a[:, None] * G[ks] + noise * rng.standard_normal(
            (ranks[i], m)
        ) / np.sqrt(m)
    return lvrm_pefs_from_dense(A, ranks, K), G
