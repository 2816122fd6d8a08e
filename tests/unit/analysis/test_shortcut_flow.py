"""Pieces of the shortcut flow: group accuracies, flawed / cue shares, the gradient-chosen scale,
the edit choice, and the optional Coar-Edit step's guard."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from npeff.analysis.shortcut import (
    cue_carrying,
    frac_flawed,
    group_accuracies,
    group_masks,
    shortcut_accuracy_metrics,
)
from npeff.artifacts.layout import ParameterLayout
from npeff.coar import shortcut as shortcut_coar
from npeff.perturb.shortcut import best_edit, gradient_scale, loss_and_slope
from npeff.perturb.vector import ModelPerturber, ParameterVector

NAMES = ["a", "cue", "cue_conflict"]


def test_group_accuracies_by_hand():
    concepts = np.array([[0, 1, 1], [0, 1, 0], [1, 0, 0], [0, 1, 1]], dtype=bool)
    correct = np.array([0, 1, 1, 1], dtype=bool)
    m = shortcut_accuracy_metrics(correct.astype(int), np.ones(4, int), concepts, NAMES)
    assert m["conflict_acc"] == 0.5 and m["other_acc"] == 1.0 and m["cue_free_acc"] == 1.0
    assert m["all_acc"] == 0.75 and m["n_conflict"] == 2
    stacked = group_accuracies(np.stack([correct, ~correct]), group_masks(concepts, NAMES))
    assert np.allclose(stacked["conflict"], [0.5, 0.5])
    with pytest.raises(ValueError, match="shortcut"):
        group_masks(concepts[:, :1], ["a"])


def test_flawed_and_cue_shares_match_brute_force():
    rng = np.random.default_rng(0)
    n, r, k = 200, 6, 16
    W = rng.random((n, r))
    wrong = rng.random(n) < 0.3
    cue = rng.random(n) < 0.25
    W[wrong & cue, 0] += 5  # component 0: wrong cue examples on top
    frac, mask = frac_flawed(W, np.arange(r), wrong, k, 0.5)
    brute = [wrong[np.argsort(-W[:, j])[:k]].mean() >= 0.5 for j in range(r)]
    assert mask.tolist() == brute and frac == np.mean(brute)
    res = cue_carrying(W, np.array([0]), cue, k=k, n_shuffles=50, seed=1)
    assert res["carrying"][0] and res["share"][0] == 1.0
    assert res["shuffled_frac_mean"] < 0.2 and res["p_value"] < 0.1
    # within correctness strata the null keeps wrong examples on top: cue share stays high-ish
    strict = cue_carrying(W, np.array([0]), cue, k=k, n_shuffles=50, seed=1, strata=wrong)
    assert strict["frac"] == 1.0


class Tiny(nn.Module):
    def __init__(self):
        super().__init__()
        self.lin = nn.Linear(3, 2)

    def forward(self, x):
        return self.lin(x)


def _setup():
    torch.manual_seed(0)
    model = Tiny()
    layout = ParameterLayout.from_named_tensors(model.named_parameters())
    perturber = ModelPerturber(model, layout)
    x = torch.randn(10, 3)
    batches = [{"x": x, "labels": torch.randint(0, 2, (10,))}]
    v = ParameterVector(layout, torch.randn(layout.n_parameters)).normalized()
    return model, perturber, batches, v


def _forward(model, batch):
    return model(batch["x"])


def test_loss_and_slope_is_the_directional_derivative():
    model, perturber, batches, v = _setup()
    before = [p.detach().clone() for p in model.parameters()]
    for rho in (0.0, 0.7):
        f, d = loss_and_slope(model, perturber, batches, v, rho, _forward)
        h = 1e-3
        fp, _ = loss_and_slope(model, perturber, batches, v, rho + h, _forward)
        fm, _ = loss_and_slope(model, perturber, batches, v, rho - h, _forward)
        assert d == pytest.approx((fp - fm) / (2 * h), rel=1e-3, abs=1e-5)
        ref = nn.functional.cross_entropy(
            _forward_at(model, perturber, v, rho, batches[0]), batches[0]["labels"]
        )
        assert f == pytest.approx(float(ref), rel=1e-6)
    for p, q in zip(model.parameters(), before):
        assert torch.equal(p, q)  # θ restored exactly


def _forward_at(model, perturber, v, rho, batch):
    with perturber.perturbed(v, rho), torch.no_grad():
        return _forward(model, batch)


def test_gradient_scale_finds_the_minimum_of_a_quadratic():
    for centre in (0.8, -1.7):

        def f(rho, centre=centre):
            return (rho - centre) ** 2, 2 * (rho - centre)

        step = gradient_scale(f, rho0=0.3, rho_max=3.0, n_bisect=12)
        assert step.scale == pytest.approx(centre, abs=3.0 / 2**10)
        assert step.loss_after < step.loss_before and not step.hit_max
    step = gradient_scale(lambda r: (-r, -1.0), rho0=0.3, rho_max=2.0)
    assert step.scale == 2.0 and step.hit_max  # no minimum in range: the largest scale
    with pytest.raises(ValueError):
        gradient_scale(lambda r: (0.0, 1.0), rho0=0.0)


def _rec(c_before, o_before, c_after, o_after):
    return {
        "before": {"fit": {"conflict": c_before, "other": o_before}},
        "after": {"fit": {"conflict": c_after, "other": o_after}},
    }


def test_best_edit_respects_the_cap():
    recs = [_rec(0.2, 0.98, 0.9, 0.80), _rec(0.2, 0.98, 0.5, 0.97), _rec(0.2, 0.98, 0.3, 0.98)]
    assert best_edit(recs, "fit", 0.02) == (1, True)
    assert best_edit(recs[:1], "fit", 0.02) == (0, False)
    assert best_edit([], "fit") == (None, False)


def test_coar_targets_and_references():
    correct = np.array([1, 0, 0, 1, 1, 0], dtype=bool)
    conflict = np.array([0, 1, 0, 1, 0, 1], dtype=bool)
    t, r = shortcut_coar.targets_and_references(correct, conflict, None, 2, 0)
    assert t.tolist() == [1, 5] and len(r) == 2 and set(r) <= {0, 3, 4}
    with pytest.raises(ValueError, match="no error"):
        shortcut_coar.targets_and_references(np.ones(6, bool), conflict, None, 2, 0)
    assert isinstance(shortcut_coar.available(), bool)
