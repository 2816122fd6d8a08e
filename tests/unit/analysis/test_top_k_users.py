"""The places that pick top-k examples or units use analysis.top_examples.top_indices: checked
against a brute-force stable ranking on data full of ties (descending value, lower index first)."""

from types import SimpleNamespace

import numpy as np

from npeff.coar.compare import agreement, top_unit_sets
from npeff.perturb.flawed import select_flawed_components


def brute_top(col: np.ndarray, k: int) -> list[int]:
    """Indices of the k largest entries of col, ties by the lower index (a plain sort)."""
    return sorted(range(len(col)), key=lambda i: (-col[i], i))[:k]


def tied(shape, seed):
    return np.random.default_rng(seed).integers(0, 3, size=shape).astype(np.float64)  # many ties


def test_top_unit_sets_and_jaccard_with_ties():
    shares = tied((4, 12), 0)
    got = top_unit_sets(shares, 5)
    assert got.tolist() == [brute_top(row, 5) for row in shares]
    W, eff = tied((30, 3), 1), tied((3, 30), 2)
    jac = agreement(W, eff, top=7)["jaccard"]
    for j in range(3):
        a, b = set(brute_top(W[:, j], 7)), set(brute_top(np.abs(eff[j]), 7))
        assert jac[j] == len(a & b) / len(a | b)


def test_flawed_components_with_ties():
    W = tied((40, 5), 3)
    labels = np.zeros(40, dtype=np.int64)
    predictions = (np.arange(40) % 2).astype(np.int64)  # odd examples are wrong
    got = select_flawed_components(W, range(5), labels, predictions, n_top=6, min_incorrect=4)
    want = [j for j in range(5) if sum(i % 2 for i in brute_top(W[:, j], 6)) >= 4]
    assert got.tolist() == want


def test_top_unit_mass_with_ties():
    from npeff.groups.coar_units import top_unit_mass

    w = tied((6, 10), 4) * np.where(np.random.default_rng(5).random((6, 10)) < 0.5, -1, 1)
    neuron = np.arange(10) % 4
    att = SimpleNamespace(weights=w)
    import npeff.groups.coar_units as cu

    orig = cu.unit_neurons
    cu.unit_neurons = lambda attributions, n: neuron
    try:
        mass = top_unit_mass(att, 4, 3)
    finally:
        cu.unit_neurons = orig
    want = np.zeros((6, 4))
    for i in range(6):
        for c in brute_top(np.abs(w[i]), 3):
            want[i, neuron[c]] += abs(w[i, c])
    assert np.array_equal(mass, want)
