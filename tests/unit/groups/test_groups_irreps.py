"""Groups and their real irreps, against facts that do not come from the code."""

from __future__ import annotations

import itertools

import numpy as np
import pytest

from npeff.groups import get_group
from npeff.groups.irreps import irrep_bases
from npeff.groups.neurons import variance_shares

NAMES = ["S3", "S4", "A4", "A5", "Z12", "Z7", "D5", "D6", "S3xZ3", "Z2xZ2xZ2"]


def _check_group_axioms(g):
    n = g.order
    t = g.table
    assert np.array_equal(t[0], np.arange(n)) and np.array_equal(t[:, 0], np.arange(n))
    for row in t:  # Latin square
        assert sorted(row) == list(range(n))
    a, b, c = np.meshgrid(np.arange(n), np.arange(n), np.arange(n), indexing="ij")
    assert np.array_equal(t[t[a, b], c], t[a, t[b, c]])  # associativity


@pytest.mark.parametrize("name", NAMES + ["S5"])
def test_irreps_homomorphism_orthogonal_inequivalent_complete(name):
    g = get_group(name)
    if g.order <= 60:
        _check_group_axioms(g)
    info = g.irrep_info()
    for ir in info:
        m = ir.matrices
        assert np.abs(np.einsum("aij,bjk->abik", m, m) - m[g.table]).max() < 1e-9
        assert np.abs(np.einsum("aji,ajk->aik", m, m) - np.eye(ir.dim)).max() < 1e-9
    chi = np.array([np.trace(m, axis1=1, axis2=2) for m in g.irreps()])
    gram = chi @ chi.T / g.order
    kappa = np.diag(gram)
    assert np.allclose(gram - np.diag(kappa), 0, atol=1e-9)  # pairwise inequivalent
    assert set(np.round(kappa).astype(int)) <= {1, 2, 4}
    assert np.isclose(sum(ir.dim**2 / k for ir, k in zip(info, kappa)), g.order)
    # the character table is constant on conjugacy classes
    for c in g.conjugacy_classes:
        assert np.allclose(chi[:, c], chi[:, c[:1]])


def test_dimensions_and_class_counts():
    dims = lambda n: [ir.dim for ir in get_group(n).irrep_info()]  # noqa: E731
    assert dims("S4") == [1, 1, 2, 3, 3]
    assert dims("S5") == [1, 1, 4, 4, 5, 5, 6]
    assert dims("Z12") == [1, 1, 2, 2, 2, 2, 2]
    assert dims("A5") == [1, 3, 3, 4, 5]
    # number of conjugacy classes: partitions of n (S_n), 5 (A5), (n+3)/2 for odd D_n
    assert len(get_group("S5").conjugacy_classes) == 7
    assert len(get_group("A5").conjugacy_classes) == 5
    assert len(get_group("D5").conjugacy_classes) == 4
    assert len(get_group("D6").conjugacy_classes) == 6
    kinds = [ir.kind for ir in get_group("A4").irrep_info()]
    assert sorted(kinds) == ["complex", "real", "real"]  # ω, ω̄ make one 2-D real irrep
    # S4 has 30 subgroups (28 proper and nontrivial), S3 has 6
    assert len(get_group("S4").subgroups()) == 28
    assert len(get_group("S3").subgroups()) == 4


def test_tables_match_independent_constructions():
    g = get_group("S4")
    perms = list(itertools.permutations(range(4)))
    for i, a in enumerate(perms):
        for j, b in enumerate(perms):
            assert perms[g.table[i, j]] == tuple(a[b[k]] for k in range(4))
    z = get_group("Z12")
    assert np.array_equal(z.table, (np.arange(12)[:, None] + np.arange(12)) % 12)
    p = get_group("S3xZ3")
    s3, z3 = get_group("S3"), get_group("Z3")
    for a in range(18):
        for b in range(18):
            (a1, a2), (b1, b2) = divmod(a, 3), divmod(b, 3)
            assert p.table[a, b] == s3.table[a1, b1] * 3 + z3.table[a2, b2]
    d = get_group("D5")  # r^5 = s^2 = e, s r s = r^-1
    r, s = 1, 5
    assert d.element_orders[r] == 5 and d.element_orders[s] == 2
    assert d.table[d.table[s, r], s] == d.inverses[r]
    a5 = get_group("A5")
    assert a5.order == 60 and a5.parity.all()


def test_cosets_partition_the_group():
    g = get_group("S4")
    for h in g.subgroups():
        assert g.is_subgroup(h)
        left, right = g.left_cosets(h), g.right_cosets(h)
        for lab in (left, right):
            assert np.all(np.bincount(lab) == len(h))
        for x in range(g.order):  # x ~ y in the same left coset iff x⁻¹y in H
            same = left == left[x]
            assert np.array_equal(same, np.isin(g.table[g.inverses[x]], h))


@pytest.mark.parametrize("name", ["S4", "Z12", "A4", "S3xZ3"])
def test_projection_of_one_irrep_weight(name):
    g = get_group(name)
    rng = np.random.default_rng(0)
    bases = irrep_bases(g)
    assert np.allclose(np.concatenate(bases, 1).T @ np.concatenate(bases, 1), np.eye(g.order))
    for i, ir in enumerate(g.irrep_info()[1:], start=1):
        coef = rng.standard_normal((ir.dim, ir.dim))
        w = np.einsum("gab,ab->g", ir.matrices, coef)  # one irrep's matrix entries
        shares = variance_shares(g, w[:, None])[0]
        assert shares[i] >= 0.999


@pytest.mark.parametrize(
    "bad, match",
    [("Q8", "unknown group"), ("S7", "n must be in"), ("A9", "n must be in"), ("Z0", "Z_0")],
)
def test_bad_group_names(bad, match):
    with pytest.raises(ValueError, match=match):
        get_group(bad)
