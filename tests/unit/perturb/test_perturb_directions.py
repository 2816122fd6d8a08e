"""Direction construction (LRM rejection, D-NPEFF merge) against direct re-implementations."""

import numpy as np
import pytest
import scipy.sparse as sp
import torch
from torch import nn

from npeff.artifacts.layout import ParameterLayout
from npeff.perturb.directions import (
    d_merge_delta,
    h_row,
    loss_gradient_sign,
    lrm_direction,
    lrm_reduced_direction,
    normalize_rows,
    unit_dataset_fisher,
)


def _reference_rejection(G, j, tau):
    """Plain-Python loop over lists: normalize, reject sequentially, normalize."""
    rows = [list(map(float, g)) for g in G]
    rows = [[x / sum(y * y for y in g) ** 0.5 for x in g] for g in rows]
    gj = rows[j]
    v = list(gj)
    for i, gi in enumerate(rows):
        if i == j:
            continue
        cos = abs(sum(a * b for a, b in zip(gj, gi)))
        if tau is not None and cos > tau:
            continue
        if tau is None:
            continue
        dot = sum(a * b for a, b in zip(v, gi))
        v = [a - dot * b for a, b in zip(v, gi)]
    n = sum(a * a for a in v) ** 0.5
    return np.array([a / n for a in v])


@pytest.mark.parametrize("tau", [0.35, 0.1, 0.9, None])
def test_lrm_rejection_matches_explicit_loop(tau):
    rng = np.random.default_rng(3)
    r, mp = 7, 12
    G = rng.normal(size=(r, mp))
    G[3] = G[1] + 0.2 * rng.normal(size=mp)  # a highly similar pair: skipped at τ = 0.35
    G[5] *= 10.0  # scale must not matter
    G_unit = normalize_rows(G)
    for j in range(r):
        got = lrm_reduced_direction(G_unit, j, tau)
        ref = _reference_rejection(G, j, tau)
        np.testing.assert_allclose(got, ref, rtol=1e-10, atol=1e-12)
        assert np.linalg.norm(got) == pytest.approx(1.0)


def test_lrm_rejection_removes_the_last_rejected_component():
    # After the single pass v is exactly orthogonal to the last rejected g_i (and, with mutually
    # orthogonal others, to all of them), while the skipped similar one is kept.
    g0 = np.array([1.0, 0.0, 0.0, 0.0])
    g1 = np.array([0.6, 0.8, 0.0, 0.0])  # cos 0.6 > 0.35: skipped
    g2 = np.array([0.3, 0.0, 0.9539392, 0.0])  # cos 0.3: rejected
    G = np.stack([g0, g1, g2])
    v = lrm_reduced_direction(normalize_rows(G), 0, 0.35)
    assert abs(v @ normalize_rows(G)[2]) < 1e-12
    assert abs(v @ normalize_rows(G)[1]) > 0.1


def test_lrm_direction_in_full_parameter_space():
    model = nn.Linear(3, 2)
    layout = ParameterLayout.from_named_tensors(model.named_parameters())
    cols = np.array([0, 2, 5, 7])
    G = np.random.default_rng(0).normal(size=(3, 4))
    v = lrm_direction(G, cols, layout, 1, 0.35)
    red = lrm_reduced_direction(normalize_rows(G), 1, 0.35)
    dense = np.zeros(layout.n_parameters)
    dense[cols] = red
    np.testing.assert_allclose(v.flat.numpy(), dense, rtol=1e-6, atol=1e-7)
    assert set(v.named()) == {"weight", "bias"}


def test_d_merge_matches_fisher_merge_formula():
    rng = np.random.default_rng(1)
    m = 50
    h = np.abs(rng.normal(size=m)) * (rng.random(m) < 0.4)
    h /= np.linalg.norm(h)
    fisher = np.abs(rng.normal(size=m)) * (rng.random(m) < 0.7)  # zeros: the floor matters
    fisher_unit = unit_dataset_fisher(fisher)
    s = np.sign(rng.normal(size=m))
    theta = rng.normal(size=m)
    delta, lam, floor = 0.3, 0.4, 1e-3
    got = d_merge_delta(h, fisher_unit, s, delta, lam, floor)
    # explicit Fisher-weighted merge of θ and θ − δ·s, per parameter
    ref = np.zeros(m)
    for k in range(m):
        f = max(fisher[k] / (np.linalg.norm(fisher) + 1e-12), floor)  # floor, not cap
        w1, w2 = (1 - lam) * f, lam * h[k]
        merged = (w1 * theta[k] + w2 * (theta[k] - delta * s[k])) / (w1 + w2)
        ref[k] = merged - theta[k]
    np.testing.assert_allclose(got, ref, rtol=1e-9, atol=1e-12)
    assert np.all(got[h == 0] == 0)
    # floor, not cap: a huge floor shrinks the step; with a cap (min) it would not
    small = d_merge_delta(h, fisher_unit, s, delta, lam, 10.0)
    assert np.all(np.abs(small) <= np.abs(got) + 1e-15)
    # 0/0 guard
    z = d_merge_delta(np.zeros(3), np.zeros(3), np.ones(3), 1.0, 0.5, 0.0)
    assert np.all(z == 0)


def test_h_row_dense_and_sparse_agree():
    H = np.abs(np.random.default_rng(2).normal(size=(4, 9))) * (np.arange(9) % 3 == 0)
    for j in range(4):
        np.testing.assert_array_equal(h_row(H, j), h_row(sp.csr_matrix(H), j))


def test_loss_gradient_sign_matches_autograd_sum():
    torch.manual_seed(0)
    model = nn.Linear(4, 3)
    layout = ParameterLayout.from_named_tensors(model.named_parameters())
    x = torch.randn(10, 4)
    y = torch.randint(0, 3, (10,))
    batches = [{"x": x[:6], "labels": y[:6]}, {"x": x[6:], "labels": y[6:]}]

    def fwd(mod, b):
        return mod(b["x"])

    s = loss_gradient_sign(model, batches, dict(model.named_parameters()), layout, fwd)
    # reference: one full-batch loss, summed over examples
    model.zero_grad()
    torch.nn.functional.cross_entropy(model(x), y, reduction="sum").backward()
    ref = torch.cat([model.weight.grad.reshape(-1), model.bias.grad]).sign().numpy()
    np.testing.assert_array_equal(s, ref)
