"""COAR regression: planted linear models recovered by least squares, ridge and the lasso path."""

from __future__ import annotations

import numpy as np
import torch

from npeff.coar import regression


def _planted(m=400, c=30, n=6, noise=0.0, sparse=False, seed=0):
    rng = np.random.default_rng(seed)
    keep = rng.random((m, c)) >= 0.2
    w = rng.normal(size=(n, c))
    if sparse:
        w[:, c // 3 :] = 0.0
    b = rng.normal(size=n)
    y = keep @ w.T + b + noise * rng.normal(size=(m, n))
    return keep, y, w, b


def _stats(keep, y):
    return regression.gram([(torch.from_numpy(keep), torch.from_numpy(y))])


def test_least_squares_recovers_planted_model_exactly():
    keep, y, w, b = _planted()
    # chunked accumulation = one pass
    chunks = [
        (torch.from_numpy(keep[i : i + 64]), torch.from_numpy(y[i : i + 64]))
        for i in range(0, 400, 64)
    ]
    stats = regression.gram(chunks)
    wh, bh = regression.fit_closed_form(stats)
    assert np.allclose(wh, w, atol=1e-4) and np.allclose(bh, b, atol=1e-4)


def test_ridge_matches_dense_closed_form():
    keep, y, _, _ = _planted(noise=0.3)
    wh, bh = regression.fit_closed_form(_stats(keep, y), ridge=5.0)
    x = np.concatenate([keep.astype(float), np.ones((keep.shape[0], 1))], 1)
    pen = 5.0 * np.eye(x.shape[1])
    pen[-1, -1] = 0
    beta = np.linalg.solve(x.T @ x + pen, x.T @ y)
    assert np.allclose(wh, beta[:-1].T, atol=1e-4) and np.allclose(bh, beta[-1], atol=1e-4)


def test_lasso_path_finds_support_and_picks_lambda_on_validation():
    rng = np.random.default_rng(1)
    m, c, n = 800, 30, 5
    keep = rng.random((m, c)) >= 0.2
    w = np.zeros((n, c))
    w[:, :8] = rng.choice([-1, 1], size=(n, 8)) * rng.uniform(1.0, 2.0, size=(n, 8))
    y = keep @ w.T + 0.5 + 0.3 * rng.normal(size=(m, n))
    tr, va = slice(0, 700), slice(700, m)
    res = regression.fit_lasso_path(
        _stats(keep[tr], y[tr]), _stats(keep[va], y[va]), n_lambdas=15, keep_path=True
    )
    # the chosen λ minimises the validation error, recomputed densely from the path's fits
    x_val = np.concatenate([keep[va].astype(float), np.ones((m - 700, 1))], 1)
    dense = np.stack([((x_val @ b - y[va]) ** 2).mean(0) for b in res.path])  # [K, n]
    assert np.array_equal(res.chosen, dense.argmin(0))
    assert np.all(res.chosen > 0)  # λ_max (all zero) is never best here
    # the path passes through the exact support, and the chosen fit has the right support
    supports = np.abs(res.path[:, :-1, :]) > 1e-8  # [K, |C|, n]
    truth = (w != 0).T
    assert all(
        any(np.array_equal(supports[k, :, j], truth[:, j]) for k in range(15)) for j in range(n)
    )
    big = np.abs(res.weights) > 0.2
    assert np.array_equal(big, w != 0)
    assert np.abs(res.weights[w == 0]).max() < 0.1


def test_gram_mse_equals_dense_mse():
    keep, y, w, b = _planted(noise=0.2)
    stats = _stats(keep, y)
    beta = torch.from_numpy(np.concatenate([w.T, b[None]], 0))
    dense = ((keep @ w.T + b - y) ** 2).mean(0)
    assert np.allclose(regression.mse(stats, beta).numpy(), dense)
