"""NPEFF↔COAR statistics on a planted problem: component mass on known units, COAR's predicted
effect of ablating S_j equals the true one on an exactly linear model."""

from __future__ import annotations

import numpy as np
import torch

from npeff.coar import compare, compute_attributions
from npeff.coar.ablation import AblationEngine, margin
from npeff.models import parameter_layout
from npeff.models.units import build_unit_map
from tests.helpers.problems import two_class_problem


def test_unit_shares_find_planted_units():
    m, _, _, _ = two_class_problem()
    layout = parameter_layout(m)
    um = build_unit_map(m, "l2.weight")
    g = np.zeros((2, layout.n_parameters))
    for j, unit in enumerate((3, 7)):
        g[j, um.flat_indices(layout, unit).numpy()] = 1.0
    g[:, :5] = 0.1  # some mass outside any unit (l1 weights)
    shares = compare.unit_shares(g, layout, um)
    assert shares.argmax(1).tolist() == [3, 7]
    assert np.allclose(shares.sum(1), 12 / (12 + 5 * 0.01))
    assert compare.top_unit_sets(shares, 1)[:, 0].tolist() == [3, 7]


def test_predicted_effect_equals_true_effect_on_linear_model(tmp_path):
    m, _, _, loader = two_class_problem()
    att = compute_attributions(
        m, loader, tmp_path / "a.h5", units="l2.weight", n_masks=60, evaluate=False, progress=False
    )
    sets = np.array([[0, 1, 2], [4, 5, 9]])
    pred = compare.coar_predicted_effect(att.weights, sets)
    eng = AblationEngine(m, att.units)
    base = torch.cat([margin(m(**{"x": b["x"]}), b["labels"]) for b in loader]).detach()
    true = compare.true_effect(eng, loader, base, sets)
    assert np.allclose(pred, true, atol=1e-4)
    coeffs = np.abs(true.T) + 0.01 * np.random.default_rng(0).random(true.T.shape)
    rand = compare.true_effect(eng, loader, base, compare.random_unit_sets(10, [3, 3], seed=1))
    stats = compare.agreement(coeffs, pred, rand, top=10)
    assert np.all(stats["spearman"] > 0.95) and np.all(stats["jaccard"] > 0.5)
    assert stats["spearman_random"].shape == (2,)


def test_true_effect_and_kl_equal_the_loop():
    from npeff.coar.ablation import loop_logits
    from npeff.perturb.metrics import per_example_kl

    m, _, _, loader = two_class_problem()
    um = build_unit_map(m, "l2.weight")
    sets = np.array([[0, 1, 2], [4, 5, 9], [3, 7, 8]])
    eff, kl = compare.true_effect_and_kl(AblationEngine(m, um, masks_per_forward=2), loader, sets)
    keep = torch.ones(3, um.n_units, dtype=torch.bool)
    for j, s in enumerate(sets):
        keep[j, s] = False
    for b, lo in zip(loader, range(0, 40, 16)):
        ref = loop_logits(m, um, keep, b)  # [3, B, 2], weights zeroed in place
        base = m(b["x"]).detach()
        sl = slice(lo, lo + len(b["labels"]))
        assert np.allclose(
            eff[:, sl], (margin(ref, b["labels"]) - margin(base, b["labels"])).numpy(), atol=1e-5
        )
        for j in range(3):
            assert np.allclose(kl[j, sl], per_example_kl(base, ref[j]).numpy(), atol=1e-7)
