"""``mass_on_units``: a component's pseudo-Fisher mass on units, the one implementation behind
COAR's unit shares, the group analysis' neuron mass and the TRACR layer check; against loops."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.sparse as sp

from npeff.models.units import mass_on_units, unit_membership


def _brute(vectors: np.ndarray, sets: list[list[int]], kind: str, share: bool) -> np.ndarray:
    out = np.zeros((vectors.shape[0], len(sets)))
    for j in range(vectors.shape[0]):
        entry = [float(x) ** 2 if kind != "diag" else max(float(x), 0.0) for x in vectors[j]]
        total = sum(entry)
        for c, cols in enumerate(sets):
            mass = sum(entry[i] for i in cols)
            out[j, c] = (mass / total if total > 0 else 0.0) if share else mass
    return out


@pytest.mark.parametrize("kind", ["lrm", "diag"])
@pytest.mark.parametrize("share", [True, False])
@pytest.mark.parametrize("sparse", [False, True])
def test_owner_partition_matches_the_loop(kind, share, sparse):
    rng = np.random.default_rng(1)
    r, m, n_units = 5, 40, 7
    v = rng.standard_normal((r, m)) * (rng.random((r, m)) < 0.5)
    v[2] = 0.0  # a component without mass: share 0
    owner = rng.integers(-1, n_units, m)  # -1: a column of no unit
    owner[:3] = [0, 6, -1]
    sets = [list(np.flatnonzero(owner == c)) for c in range(n_units)]
    got = mass_on_units(
        sp.csr_matrix(v) if sparse else v, unit_membership(owner, n_units), kind, share
    )
    assert got.shape == (r, n_units)
    np.testing.assert_allclose(got, _brute(v, sets, kind, share), rtol=1e-12, atol=1e-15)
    if share:  # a row sums to the share of its mass on unit columns
        on_units = _brute(v, [list(np.flatnonzero(owner >= 0))], kind, True)[:, 0]
        np.testing.assert_allclose(got.sum(1), on_units, rtol=1e-12)


def test_overlapping_sets_from_a_boolean_membership():
    rng = np.random.default_rng(2)
    v = rng.standard_normal((4, 30))
    member = rng.random((30, 5)) < 0.4  # columns may belong to several sets (tracr blocks)
    member[:, 0] = True  # every column: share 1
    sets = [list(np.flatnonzero(member[:, c])) for c in range(5)]
    got = mass_on_units(v, member, "lrm")
    np.testing.assert_allclose(got, _brute(v, sets, "lrm", True), rtol=1e-12)
    np.testing.assert_allclose(got[:, 0], 1.0)


def test_shapes_are_checked():
    with pytest.raises(ValueError, match="component columns"):
        mass_on_units(np.ones((2, 5)), unit_membership(np.zeros(4, dtype=int), 1))
    with pytest.raises(ValueError, match="units"):
        unit_membership(np.array([0, 3]), 2)
