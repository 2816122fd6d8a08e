"""Cross-run component matching (paper §3.3) vs brute force and planted runs."""

import numpy as np
import pytest
import scipy.sparse as sp

from npeff.analysis import (
    average_max_cosine,
    coefficient_cosine,
    component_similarity,
    component_splits,
    match_runs,
    pef_norm_ratio,
    top_indices,
)


def brute_cos(a, b):
    na, nb = np.sqrt(sum(x * x for x in a)), np.sqrt(sum(x * x for x in b))
    if na == 0 or nb == 0:
        return 0.0
    return sum(x * y for x, y in zip(a, b)) / (na * nb)


def sparse_W(rng, n, r, density=0.2):
    return rng.random((n, r)) * (rng.random((n, r)) < density)


def test_cosine_and_average_max_match_brute_force():
    rng = np.random.default_rng(0)
    Wa, Wb = sparse_W(rng, 40, 5), sparse_W(rng, 40, 7)
    Wa[:, 2] = 0  # an all-zero column has cosine 0
    cos = coefficient_cosine(Wa, Wb)
    for i in range(5):
        for j in range(7):
            assert cos[i, j] == pytest.approx(brute_cos(Wa[:, i], Wb[:, j]))
    a2b, b2a = average_max_cosine(Wa, Wb)
    assert a2b == pytest.approx(
        np.mean([max(brute_cos(Wa[:, i], Wb[:, j]) for j in range(7)) for i in range(5)])
    )
    assert b2a == pytest.approx(
        np.mean([max(brute_cos(Wa[:, i], Wb[:, j]) for i in range(5)) for j in range(7)])
    )


def test_identical_runs_give_one():
    W = sparse_W(np.random.default_rng(1), 100, 8)
    res = match_runs(W, W)
    assert res.a_to_b == pytest.approx(1.0) and res.b_to_a == pytest.approx(1.0)
    assert res.best_b_for_a.tolist() == list(range(8))
    assert res.splits is None


def test_permuted_and_rescaled_components_give_one():
    rng = np.random.default_rng(2)
    W = sparse_W(rng, 100, 8)
    perm = rng.permutation(8)
    Wb = W[:, perm] * rng.uniform(0.5, 3.0, size=8)  # column j of b is column perm[j] of a
    res = match_runs(W, Wb)
    assert res.a_to_b == pytest.approx(1.0) and res.b_to_a == pytest.approx(1.0)
    assert res.best_a_for_b.tolist() == perm.tolist()
    assert res.best_b_for_a[perm].tolist() == list(range(8))


def test_planted_split_detected():
    rng = np.random.default_rng(3)
    n, r_large = 400, 10
    # Larger run: each example mostly uses one component (disjoint supports plus small noise).
    owner = rng.integers(0, r_large, size=n)
    W_large = 0.02 * rng.random((n, r_large))
    W_large[np.arange(n), owner] += rng.uniform(0.5, 1.5, size=n)
    # Smaller run: component i is the sum of a planted pair of the larger run's components.
    pairs = rng.permutation(r_large).reshape(5, 2)
    W_small = np.stack([W_large[:, a] + W_large[:, b] for a, b in pairs], axis=1)
    splits = component_splits(W_small, W_large)
    assert {i: sorted(v) for i, v in splits.items()} == {
        i: sorted(p.tolist()) for i, p in enumerate(pairs)
    }
    res = match_runs(W_large, W_small)  # order of arguments does not matter
    assert res.smaller == "b"
    assert {i: sorted(v) for i, v in res.splits.items()} == {
        i: sorted(p.tolist()) for i, p in enumerate(pairs)
    }
    assert res.to_dict()["n_smaller_with_split"] == 5
    # Each larger component is about half of its pair: cosine ~ 1/sqrt(2) to the merged one.
    assert 0.6 < res.a_to_b < 0.8 and res.b_to_a > 0.6


def test_mismatched_examples_raise():
    with pytest.raises(ValueError, match="different numbers of examples"):
        coefficient_cosine(np.ones((5, 2)), np.ones((6, 2)))


def test_component_similarity_dense_and_sparse_match_brute_force():
    rng = np.random.default_rng(4)
    G = rng.normal(size=(6, 30))
    G[3] = 0
    S = component_similarity(G)
    for i in range(6):
        for j in range(6):
            assert S[i, j] == pytest.approx(abs(brute_cos(G[i], G[j])))
    H = sp.random(6, 30, density=0.3, random_state=5, format="csr")
    assert np.allclose(component_similarity(H), component_similarity(H.toarray()))


def test_pef_norm_ratio_matches_brute_force():
    rng = np.random.default_rng(6)
    W, norms = rng.random((50, 4)), rng.uniform(0.1, 2.0, 50)
    base = np.array([1, 5, 7, 30, 49])
    ratio = pef_norm_ratio(W, norms, n_top=6, baseline_indices=base)
    top = top_indices(W, 6)
    for j in range(4):
        assert ratio[j] == pytest.approx(
            np.mean([norms[i] for i in top[j]]) / np.mean([norms[i] for i in base])
        )
    # Seeded random baseline: deterministic and of the requested size.
    assert np.allclose(
        pef_norm_ratio(W, norms, 6, n_baseline=20, seed=1),
        pef_norm_ratio(W, norms, 6, n_baseline=20, seed=1),
    )
    with pytest.raises(ValueError, match="PEF norms"):
        pef_norm_ratio(W, norms[:10])


def test_shuffled_null_is_well_below_a_real_match():
    from npeff.analysis import shuffled_average_max_cosine

    W = sparse_W(np.random.default_rng(7), 300, 6, density=0.1)
    a2b, b2a = shuffled_average_max_cosine(W, W, n_shuffles=3, seed=0)
    assert a2b < 0.4 and b2a < 0.4  # identical runs score 1.0
    rng = np.random.default_rng(0)
    want = np.mean([average_max_cosine(W, W[rng.permutation(300)]) for _ in range(3)], axis=0)
    assert (a2b, b2a) == pytest.approx(tuple(want))


def test_membership_and_kmeans_baseline():
    from npeff.baselines.kmeans import fit_kmeans, membership_coefficients

    assign = np.array([2, 0, 1, 2, 2])
    M = membership_coefficients(assign, 4)
    assert M.shape == (5, 4) and M.sum() == 5 and all(M[i, assign[i]] == 1 for i in range(5))
    with pytest.raises(ValueError, match="out of range"):
        membership_coefficients(assign, 2)
    rng = np.random.default_rng(0)
    truth = np.repeat(np.arange(3), 40)
    X = rng.normal(scale=0.1, size=(120, 2)) + np.array([[0, 0], [5, 0], [0, 5]])[truth]
    labels, scores, _ = fit_kmeans(X, 3, seed=0).apply(X)
    # The clustering equals the planted blobs up to a relabelling: avg max cosine is 1 both ways.
    a2b, b2a = average_max_cosine(
        membership_coefficients(labels, 3), membership_coefficients(truth, 3)
    )
    assert a2b == pytest.approx(1.0) and b2a == pytest.approx(1.0)
    # Scores rank each cluster's members by closeness to the centroid; non-members come last.
    top = top_indices(scores, 40)
    for j in range(3):
        assert set(top[j]) == set(np.flatnonzero(labels == j))
        d = np.linalg.norm(X[top[j]] - X[labels == j].mean(0), axis=1)
        assert np.all(np.diff(d) >= -1e-9)
