"""npeff.analysis.controls (the one shuffled-control implementation) against plain loops.

The references are the loops each caller had before it used ``shuffled_control``: the same
seeded permutations must give the same numbers, so every metric key keeps its value."""

import numpy as np
import pytest

from npeff.analysis.concepts import analyze_concepts
from npeff.analysis.controls import ShuffledControl, draw_permutation, shuffled_control
from npeff.analysis.matching import average_max_cosine, shuffled_average_max_cosine
from npeff.analysis.shortcut import cue_carrying
from npeff.analysis.top_examples import top_indices
from npeff.groups.components import irrep_mass, irrep_purity


def test_draw_permutation_kinds():
    rng = np.random.default_rng(0)
    strata = rng.integers(0, 3, size=40)
    p = draw_permutation(np.random.default_rng(1), 40, strata)
    assert sorted(p.tolist()) == list(range(40)) and (strata[p] == strata).all()
    movable = rng.random(40) < 0.5
    p = draw_permutation(np.random.default_rng(2), 40, movable=movable)
    assert (p[~movable] == np.flatnonzero(~movable)).all()
    assert sorted(p[movable].tolist()) == np.flatnonzero(movable).tolist()
    # movable = permuting the movable values in place, as rng.permutation(values) does
    values = rng.integers(0, 7, size=40)
    ref = values.copy()
    ref[movable] = np.random.default_rng(3).permutation(values[movable])
    assert (values[draw_permutation(np.random.default_rng(3), 40, movable=movable)] == ref).all()
    assert (
        draw_permutation(np.random.default_rng(4), 9) == np.random.default_rng(4).permutation(9)
    ).all()
    with pytest.raises(ValueError, match="strata or movable"):
        draw_permutation(rng, 3, np.zeros(3), np.ones(3, bool))


def test_control_values_p_value_and_key_layout():
    x = np.random.default_rng(0).normal(size=30)
    stat = lambda perm: float(np.corrcoef(x, x[perm])[0, 1])  # noqa: E731
    c = shuffled_control(stat, 30, 50, seed=7)
    rng = np.random.default_rng(7)
    ref = np.array([stat(rng.permutation(30)) for _ in range(50)])
    assert np.array_equal(c.shuffled, ref) and c.observed == pytest.approx(1.0)
    assert c.p_value() == (1 + (ref >= c.observed).sum()) / 51
    m = c.metrics("corr")
    assert set(m) == {
        "corr",
        "corr_shuffled_mean",
        "corr_shuffled_max",
        "corr_p_value",
        "n_shuffles",
    }
    assert m["corr_shuffled_mean"] == ref.mean() and m["corr_shuffled_max"] == ref.max()
    assert m["corr_p_value"] == pytest.approx(1 / 51)  # nothing beats the identity
    empty = ShuffledControl(observed=0.5, shuffled=np.zeros(0))
    assert empty.mean() is None and empty.max() is None and empty.p_value() == 1.0


def test_concepts_and_cue_controls_equal_the_old_loops():
    rng = np.random.default_rng(3)
    W = rng.random((60, 5)) * (rng.random((60, 5)) < 0.4)
    concepts = rng.random((60, 4)) < 0.5
    strata = rng.integers(0, 2, size=60)
    res = analyze_concepts(W, concepts, k=6, n_shuffles=9, seed=4, strata=strata)
    top = top_indices(W, 6)
    gen = np.random.default_rng(4)
    counts, purity = [], []
    for _ in range(9):
        p = draw_permutation(gen, 60, strata)
        inv = np.empty_like(p)
        inv[p] = np.arange(60)
        sh = concepts[inv[top]].mean(axis=1)
        counts.append(int((sh.max(axis=1) >= 1.0).sum()))
        purity.append(float(sh.max(axis=1).mean()))
    assert (
        res.shuffled_n_all_share.dtype == np.int64 and res.shuffled_n_all_share.tolist() == counts
    )
    assert res.shuffled_mean_purity.tolist() == purity
    assert res.p_value == (1 + sum(c >= res.n_all_share for c in counts)) / 10

    cue = rng.random(60) < 0.3
    comps = np.array([0, 2, 4])
    out = cue_carrying(W, comps, cue, k=5, min_share=0.4, n_shuffles=8, seed=1)
    top = top_indices(W[:, comps], 5)
    gen = np.random.default_rng(1)
    shuf = []
    for _ in range(8):
        p = gen.permutation(60)
        inv = np.empty_like(p)
        inv[p] = np.arange(60)
        shuf.append((cue[inv[top]].mean(axis=1) >= 0.4).mean())
    assert out["shuffled_frac_mean"] == float(np.mean(shuf))
    assert out["shuffled_frac_max"] == float(np.max(shuf))
    assert out["p_value"] == (1 + sum(s >= out["frac"] for s in shuf)) / 9


def test_irrep_and_matching_controls_equal_the_old_loops():
    rng = np.random.default_rng(5)
    mass = rng.random((4, 12))
    irrep = rng.integers(0, 3, size=12)
    live = rng.random(12) < 0.7
    out = irrep_purity(mass, irrep, 3, live, n_shuffles=6, seed=2)
    labels = irrep.copy()
    labels[~live] = -1
    gen = np.random.default_rng(2)
    idx = np.nonzero(labels >= 0)[0]
    ref = []
    for _ in range(6):
        perm = labels.copy()
        perm[idx] = gen.permutation(labels[idx])
        ref.append(float(irrep_mass(mass, perm, 3).max(axis=1).mean()))
    assert out["shuffled_mean_purity"] == float(np.mean(ref))
    assert out["shuffled_mean_purity_max"] == float(np.max(ref))
    assert np.isnan(irrep_purity(mass, irrep, 3, live, n_shuffles=0)["shuffled_mean_purity"])

    W_a, W_b = rng.random((30, 3)), rng.random((30, 4))
    gen = np.random.default_rng(9)
    vals = np.asarray([average_max_cosine(W_a, W_b[gen.permutation(30)]) for _ in range(4)])
    assert shuffled_average_max_cosine(W_a, W_b, 4, seed=9) == (
        vals[:, 0].mean(),
        vals[:, 1].mean(),
    )
