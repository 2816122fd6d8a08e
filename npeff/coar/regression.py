"""COAR's regression: one linear model per example on the keep-mask plus a bias, fit jointly.

Features ``X = [keep, 1]`` (``[m, |C|+1]``), targets the margins ``Y`` ``[m, n]``. Everything
is computed from the Gram statistics ``XᵀX`` ``[p, p]`` and ``XᵀY`` ``[p, n]`` (p = |C|+1, float64),
accumulated over mask chunks, so memory does not grow with m.

- ``lstsq``: ordinary least squares in closed form (the authors' released configs: λ = 0).
- ``ridge``: ``min ‖Y − Xβ‖² + λ‖w‖²`` (bias unpenalised), closed form.
- ``lasso``: ``min (1/2m)‖y − Xβ‖² + λ‖w‖₁`` per example by FISTA on the Gram matrix along a
  path λ_max → eps·λ_max (log-spaced, warm starts); each example's λ is the one with the least
  validation error, and the final model is refit on train+validation at that λ (as the authors'
  ``fast_l1`` does; their configs set the path to the single value λ = 0).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

import numpy as np
import torch

from npeff.errors import NpeffUserError

SOLVERS = ("lstsq", "ridge", "lasso")


@dataclass
class GramStats:
    """``xtx`` float64 ``[p, p]``, ``xty`` ``[p, n]``, ``yty`` ``[n]`` (Σ y²) over ``m`` rows."""

    xtx: torch.Tensor
    xty: torch.Tensor
    yty: torch.Tensor
    m: int

    def __add__(self, other: GramStats) -> GramStats:
        return GramStats(
            self.xtx + other.xtx, self.xty + other.xty, self.yty + other.yty, self.m + other.m
        )


def design(masks: torch.Tensor) -> torch.Tensor:
    """``[keep, 1]`` float64 ``[m, |C|+1]`` from keep-masks ``[m, |C|]``."""
    x = torch.as_tensor(masks).to(torch.float64)
    return torch.cat([x, torch.ones(x.shape[0], 1, dtype=torch.float64)], dim=1)


def gram(chunks: Iterable[tuple[torch.Tensor, torch.Tensor]]) -> GramStats:
    """Accumulate Gram statistics over ``(masks [b, |C|], margins [b, n])`` chunks."""
    total = None
    for masks, y in chunks:
        x = design(masks)
        y = torch.as_tensor(y).to(torch.float64)
        s = GramStats(x.T @ x, x.T @ y, (y * y).sum(0), int(x.shape[0]))
        total = s if total is None else total + s
    if total is None:
        raise NpeffUserError("no ablations to fit: the attributions file holds no masks")
    return total


def _split(beta: torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
    """``β [p, n]`` → weights float32 ``[n, |C|]``, bias ``[n]``."""
    return beta[:-1].T.float().numpy(), beta[-1].float().numpy()


def fit_closed_form(stats: GramStats, ridge: float = 0.0) -> tuple[np.ndarray, np.ndarray]:
    """Least squares (``ridge=0``) or ridge; returns weights ``[n, |C|]`` and bias ``[n]``."""
    p = stats.xtx.shape[0]
    if ridge < 0:
        raise NpeffUserError(f"ridge penalty must be >= 0, got {ridge}")
    if ridge == 0 and stats.m < p:
        raise NpeffUserError(
            f"least squares needs at least |C|+1 = {p} ablations, the file has {stats.m}: "
            "draw more masks (coar.n_masks) or use coar.solver=ridge / lasso"
        )
    pen = torch.full((p,), float(ridge), dtype=torch.float64)
    pen[-1] = 0.0
    a = stats.xtx + torch.diag(pen)
    try:
        chol = torch.linalg.cholesky(a)
        beta = torch.cholesky_solve(stats.xty, chol)
    except RuntimeError:
        if ridge == 0:
            beta = torch.linalg.lstsq(a, stats.xty).solution
        else:
            raise
    return _split(beta)


def mse(stats: GramStats, beta: torch.Tensor) -> torch.Tensor:
    """Per-example mean squared error ``[n]`` of ``β [p, n]`` on the rows behind ``stats``."""
    quad = (beta * (stats.xtx @ beta)).sum(0)
    lin = (beta * stats.xty).sum(0)
    return (stats.yty - 2 * lin + quad) / max(stats.m, 1)


def _fista(
    stats: GramStats,
    lam: torch.Tensor,
    beta0: torch.Tensor,
    lipschitz: float,
    max_iter: int,
    tol: float,
) -> torch.Tensor:
    """FISTA for ``(1/2m)‖Y − Xβ‖² + Σ_j lam_j ‖w_j‖₁`` (bias row unpenalised)."""
    m = stats.m
    g, c = stats.xtx / m, stats.xty / m
    step = 1.0 / lipschitz
    beta, z, t = beta0.clone(), beta0.clone(), 1.0
    thresh = (step * lam).unsqueeze(0)  # [1, n]
    for _ in range(max_iter):
        grad = g @ z - c
        new = z - step * grad
        w = new[:-1]
        new[:-1] = torch.sign(w) * torch.clamp(w.abs() - thresh, min=0.0)
        t_new = 0.5 * (1 + (1 + 4 * t * t) ** 0.5)
        z = new + ((t - 1) / t_new) * (new - beta)
        delta = float((new - beta).abs().max())
        beta, t = new, t_new
        if delta < tol:
            break
    return beta


def lambda_max(stats: GramStats) -> torch.Tensor:
    """Per example the smallest λ with all weights zero: ``max_c |x_cᵀ(y − ȳ)|/m`` ``[n]``."""
    m = stats.m
    xbar = stats.xtx[-1, :-1] / m  # column means of the mask part [|C|]
    ybar = stats.xty[-1] / m  # [n]
    cov = stats.xty[:-1] / m - xbar[:, None] * ybar[None, :]
    return cov.abs().amax(0)


@dataclass
class LassoPath:
    """Result of :func:`fit_lasso_path`: the fit and the path it was chosen on."""

    weights: np.ndarray  # float32 [n, |C|] refit on train+val at the chosen λ
    bias: np.ndarray  # float32 [n]
    lambdas: np.ndarray  # float64 [K, n] the path per example
    val_mse: np.ndarray  # float64 [K, n]
    chosen: np.ndarray  # int64 [n] index into the path
    path: np.ndarray | None = None  # float64 [K, p, n] train fits along the path (keep_path)


def fit_lasso_path(
    train: GramStats,
    val: GramStats,
    *,
    n_lambdas: int = 10,
    eps: float = 1e-3,
    max_iter: int = 2000,
    tol: float = 1e-7,
    keep_path: bool = False,
) -> LassoPath:
    """Lasso path on ``train``, λ per example picked on ``val``, refit on train+val."""
    if val.m < 1:
        raise NpeffUserError("the lasso path needs validation masks (coar.val_fraction > 0)")
    lmax = lambda_max(train).clamp(min=1e-12)
    ratios = torch.logspace(0, np.log10(eps), int(n_lambdas), dtype=torch.float64)
    lam_path = ratios[:, None] * lmax[None, :]  # [K, n]
    p, n = train.xty.shape
    lip = float(torch.linalg.eigvalsh(train.xtx / train.m).max())
    beta = torch.zeros(p, n, dtype=torch.float64)
    beta[-1] = train.xty[-1] / train.m  # the mean margin
    errs, betas = [], []
    for k in range(lam_path.shape[0]):
        beta = _fista(train, lam_path[k], beta, lip, max_iter, tol)
        betas.append(beta.clone())
        errs.append(mse(val, beta))
    val_mse = torch.stack(errs)  # [K, n]
    chosen = val_mse.argmin(0)  # [n]
    both = train + val
    start = torch.stack(betas)[chosen, :, torch.arange(n)].T  # [p, n]
    lam = lam_path[chosen, torch.arange(n)]
    lip_all = float(torch.linalg.eigvalsh(both.xtx / both.m).max())
    final = _fista(both, lam, start, lip_all, max_iter, tol)
    w, b = _split(final)
    path = torch.stack(betas).numpy() if keep_path else None
    return LassoPath(w, b, lam_path.numpy(), val_mse.numpy(), chosen.numpy(), path)


def predict(weights: np.ndarray, bias: np.ndarray, masks) -> np.ndarray:
    """Predicted margins ``[t, n]`` for keep-masks ``[t, |C|]``: ``bias + keep @ wᵀ``."""
    x = np.asarray(masks, dtype=np.float64)
    return x @ np.asarray(weights, dtype=np.float64).T + np.asarray(bias, dtype=np.float64)[None]
