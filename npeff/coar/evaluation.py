"""Held-out evaluation of attributions: per-example Pearson correlation of predicted vs true
margins over fresh masks, at α_train and other ablation rates, next to the LOO and GP baselines.
"""

from __future__ import annotations

import numpy as np

from npeff.errors import NpeffUserError


def pearson_per_example(pred: np.ndarray, true: np.ndarray) -> np.ndarray:
    """Pearson correlation per example (column) of ``pred``/``true`` ``[t, n]`` → ``[n]``
    (NaN where either has no variance)."""
    p = np.asarray(pred, dtype=np.float64)
    y = np.asarray(true, dtype=np.float64)
    p = p - p.mean(0, keepdims=True)
    y = y - y.mean(0, keepdims=True)
    den = np.sqrt((p * p).sum(0) * (y * y).sum(0))
    with np.errstate(invalid="ignore", divide="ignore"):
        r = (p * y).sum(0) / den
    r[~np.isfinite(r)] = np.nan
    return r


def summarize(r: np.ndarray) -> dict:
    """Mean and median over examples (NaNs dropped) and the number of usable examples."""
    ok = r[np.isfinite(r)]
    if ok.size == 0:
        return {"mean": None, "median": None, "n": 0}
    return {"mean": float(ok.mean()), "median": float(np.median(ok)), "n": int(ok.size)}


def eval_alphas(alpha: float, factors) -> list[float]:
    """Evaluation rates ``alpha·factor`` kept inside (0, 1), sorted, α_train included."""
    rates = {round(float(alpha) * float(f), 10) for f in factors} | {round(float(alpha), 10)}
    rates = sorted(a for a in rates if 0.0 < a < 1.0)
    if len(rates) < 3:
        raise NpeffUserError(
            f"the evaluation needs α_train and two other rates in (0, 1); factors {list(factors)} "
            f"give {rates}"
        )
    return rates


def correlation_table(
    masks_by_alpha: list[np.ndarray],
    true_by_alpha: list[np.ndarray],
    alphas: list[float],
    predictors: dict[str, tuple[np.ndarray, np.ndarray]],
) -> dict:
    """``{alpha: {method: {mean, median, n}}}`` for predictors ``{name: (weights [n,|C|],
    bias [n])}`` on held-out masks ``[t, |C|]`` with true margins ``[t, n]`` per rate."""
    out = {}
    for a, masks, true in zip(alphas, masks_by_alpha, true_by_alpha):
        x = np.asarray(masks, dtype=np.float64)
        row = {}
        for name, (w, b) in predictors.items():
            pred = x @ np.asarray(w, dtype=np.float64).T + np.asarray(b, dtype=np.float64)[None]
            row[name] = summarize(pearson_per_example(pred, true))
        out[f"{a:g}"] = row
    return out


def best_alpha_index(table: dict, method: str = "coar") -> int:
    """Index (in the table's rate order) of the rate with the highest mean correlation."""
    vals = [v[method]["mean"] if v[method]["mean"] is not None else -np.inf for v in table.values()]
    return int(np.argmax(vals))
