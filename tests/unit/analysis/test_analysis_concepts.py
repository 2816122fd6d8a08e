"""Concept statistic (paper §3.2) vs brute force, planted structure and its shuffled control."""

import numpy as np
import pytest

from npeff.analysis import analyze_concepts, concept_shares, count_all_share, top_indices


def brute_top(W, j, k):
    """Top-k of column j by descending value, ties to the lower index (plain Python)."""
    n = W.shape[0]
    return sorted(range(n), key=lambda i: (-float(W[i, j]), i))[:k]


def brute_all_share_count(W, concepts, k):
    count = 0
    for j in range(W.shape[1]):
        top = brute_top(W, j, k)
        shared = [c for c in range(concepts.shape[1]) if all(concepts[i, c] for i in top)]
        count += bool(shared)
    return count


def planted(seed=0, n=400, c=6, r=12, k=8, n_planted=6):
    rng = np.random.default_rng(seed)
    concepts = rng.random((n, c)) < 0.3
    W = rng.random((n, r))
    for j in range(n_planted):
        holders = np.flatnonzero(concepts[:, j % c])
        chosen = rng.choice(holders, size=k + 4, replace=False)
        W[chosen, j] += 2.0 + rng.random(k + 4)  # planted top examples all hold concept j % c
    return W, concepts


def test_top_indices_matches_brute_force_with_ties():
    rng = np.random.default_rng(1)
    W = rng.integers(0, 4, size=(30, 5)).astype(np.float32)  # many ties
    top = top_indices(W, 7)
    for j in range(5):
        assert top[j].tolist() == brute_top(W, j, 7)
    assert top_indices(W, 100).shape == (5, 30)  # k clipped to n
    # Both code paths (full stable sort for k ≳ n/4, partition + tie fill otherwise).
    for n, k in ((200, 5), (12, 5), (500, 1)):
        Wt = rng.integers(0, 3, size=(n, 4)).astype(np.float32)
        top = top_indices(Wt, k)
        for j in range(4):
            assert top[j].tolist() == brute_top(Wt, j, k)


def test_shares_and_count_match_brute_force():
    rng = np.random.default_rng(2)
    for _ in range(5):
        n, r, c, k = (
            rng.integers(10, 60),
            rng.integers(1, 8),
            rng.integers(1, 5),
            rng.integers(1, 6),
        )
        W = rng.integers(0, 5, size=(n, r)).astype(np.float64)
        concepts = rng.random((n, c)) < 0.6
        shares = concept_shares(W, concepts, k)
        for j in range(r):
            top = brute_top(W, j, k)
            for cc in range(c):
                assert shares[j, cc] == pytest.approx(sum(concepts[i, cc] for i in top) / len(top))
        assert count_all_share(W, concepts, k) == brute_all_share_count(W, concepts, k)


def test_planted_structure_detected_and_shuffled_near_zero():
    W, concepts = planted()
    res = analyze_concepts(W, concepts, k=8, n_shuffles=20, seed=3)
    assert res.n_all_share == brute_all_share_count(W, concepts, 8)
    assert res.n_all_share >= 6
    for j in range(6):
        comp = res.components[j]
        assert comp.all_share and comp.purity == 1.0
        assert comp.best_concept == j % concepts.shape[1]
        assert comp.best_concept_name == f"concept_{j % concepts.shape[1]}"
    # Random components and the shuffled control: (0.3)^8 per concept, so ~0.
    assert res.shuffled_n_all_share.mean() <= 0.5
    assert res.p_value <= 1 / 21 + 1e-12
    assert res.mean_purity > res.shuffled_mean_purity.mean()


def test_shuffled_control_is_a_row_permutation_of_W():
    W, concepts = planted(seed=4)
    res = analyze_concepts(W, concepts, k=8, n_shuffles=3, seed=11)
    rng = np.random.default_rng(11)
    for s in range(3):
        perm = rng.permutation(W.shape[0])
        assert res.shuffled_n_all_share[s] == brute_all_share_count(W[perm], concepts, 8)


def test_no_planted_structure_gives_no_signal():
    rng = np.random.default_rng(5)
    concepts = rng.random((300, 5)) < 0.3
    W = rng.random((300, 10))
    res = analyze_concepts(W, concepts, k=8, n_shuffles=10, seed=0)
    assert res.n_all_share == 0


def test_bad_inputs_raise_clear_errors():
    W = np.ones((10, 2))
    with pytest.raises(ValueError, match="concepts cover 5 examples"):
        analyze_concepts(W, np.ones((5, 2), bool))
    with pytest.raises(ValueError, match="no concepts"):
        analyze_concepts(W, np.ones((10, 0), bool))
    with pytest.raises(ValueError, match="concept names"):
        analyze_concepts(W, np.ones((10, 2), bool), concept_names=["a"])


def test_within_strata_permutation_keeps_strata_and_is_the_null_used():
    from npeff.analysis.controls import draw_permutation as permutation

    rng = np.random.default_rng(0)
    strata = rng.integers(0, 3, size=50)
    perm = permutation(np.random.default_rng(1), 50, strata)
    assert sorted(perm.tolist()) == list(range(50)) and (strata[perm] == strata).all()
    W, concepts = planted(seed=8)
    labels = rng.integers(0, 3, size=W.shape[0])
    res = analyze_concepts(W, concepts, k=8, n_shuffles=3, seed=5, strata=labels)
    gen = np.random.default_rng(5)
    for s in range(3):
        p = permutation(gen, W.shape[0], labels)
        assert res.shuffled_n_all_share[s] == brute_all_share_count(W[p], concepts, 8)
    assert res.summary()["null"] == "rows permuted within strata"
    # A label-only component: its top-k share a concept that every example of that label holds.
    concepts2 = np.stack([labels == 0, rng.random(W.shape[0]) < 0.3], axis=1)
    W2 = rng.random((W.shape[0], 1)) + 5.0 * (labels == 0)[:, None]
    plain = analyze_concepts(W2, concepts2, k=8, n_shuffles=10, seed=0)
    strat = analyze_concepts(W2, concepts2, k=8, n_shuffles=10, seed=0, strata=labels)
    assert plain.n_all_share == 1 and plain.shuffled_n_all_share.mean() < 0.5
    assert strat.shuffled_n_all_share.mean() == 1.0  # the stricter null explains it by the label
