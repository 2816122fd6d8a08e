"""Flawed-heuristic selection against brute force, and the accuracy-change count."""

import itertools

import numpy as np
import pytest

from npeff.artifacts.perturbation import PerturbationResult
from npeff.perturb.flawed import accuracy_changes, select_flawed_components


def _brute_force(W, comps, labels, preds, n_top, min_incorrect):
    out = []
    n = W.shape[0]
    for j in comps:
        # rank every example by counting how many have a strictly larger coefficient (ties: index)
        rank = [
            sum(1 for k in range(n) if W[k, j] > W[i, j] or (W[k, j] == W[i, j] and k < i))
            for i in range(n)
        ]
        wrong = sum(1 for i in range(n) if rank[i] < n_top and labels[i] != preds[i])
        if wrong >= min_incorrect:
            out.append(j)
    return out


@pytest.mark.parametrize("seed", range(5))
def test_selection_matches_brute_force(seed):
    rng = np.random.default_rng(seed)
    n, r = 60, 12
    W = rng.random((n, r))
    W[:, 3] = np.round(W[:, 3], 1)  # ties
    labels = rng.integers(0, 3, n)
    preds = np.where(rng.random(n) < 0.5, labels, (labels + 1) % 3)
    # plant a flawed component: its top examples are the mispredicted ones
    wrong = np.flatnonzero(labels != preds)
    W[wrong, 5] += 10.0
    expansion = list(range(4, 12))
    got = select_flawed_components(W, expansion, labels, preds, n_top=16, min_incorrect=8)
    assert got.tolist() == _brute_force(W, expansion, labels, preds, 16, 8)
    assert 5 in got.tolist()
    for n_top, k in itertools.product([4, 16], [1, 3, 8]):
        assert select_flawed_components(W, range(r), labels, preds, n_top, k).tolist() == (
            _brute_force(W, range(r), labels, preds, n_top, k)
        )


def test_selection_rejects_mismatched_inputs():
    with pytest.raises(ValueError, match="same examples"):
        select_flawed_components(np.ones((5, 2)), [0], np.zeros(4), np.zeros(5))
    with pytest.raises(IndexError):
        select_flawed_components(np.ones((5, 2)), [2], np.zeros(5), np.zeros(5))


def test_accuracy_changes_counts_components_raising_accuracy():
    c = 4
    after = np.array([[0.806, 0.79], [0.79, 0.80], [0.80, 0.8049], [np.nan, 0.81]])
    z = np.zeros((c, 2))
    res = PerturbationResult(
        component_indices=np.array([3, 7, 9, 11]),
        magnitude=0.3,
        kl_top=z,
        kl_baseline=z,
        kl_top_reverse=z,
        kl_baseline_reverse=z,
        kl_ratio=np.ones(c),
        best_sign=np.ones(c, dtype=np.int8),
        pef_norm_ratio=np.ones(c),
        acc_top_before=np.ones(c),
        acc_top_after=z,
        acc_baseline_before=np.ones(c),
        acc_baseline_after=z,
        acc_all_before=0.8,
        acc_all_after=after,
        top_indices=np.zeros((c, 2), dtype=int),
        baseline_indices=np.arange(3),
    )
    out = accuracy_changes(res, threshold=0.005)
    np.testing.assert_allclose(out["best_change"], [0.006, 0.0, 0.0049, 0.01], atol=1e-12)
    assert out["n_raising_accuracy"] == 2
    assert out["raising_components"] == [3, 11]
    assert out["best_change_sign"] == [1, -1, -1, -1]
