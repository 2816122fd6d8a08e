"""Per-example KL divergences, example sets and ratios used to score perturbations (§8.2)."""

from __future__ import annotations

import numpy as np
import torch

from npeff.errors import NpeffUserError


def per_example_kl(logits_p: torch.Tensor, logits_q: torch.Tensor) -> torch.Tensor:
    """KL(softmax(p) ‖ softmax(q)) per row, float64 [n], from logits [n, C] (no clipping).

    With p the original and q the perturbed logits this is the paper's D_KL(p_θ ‖ p_θ+δ).
    """
    if logits_p.shape != logits_q.shape:
        raise NpeffUserError(
            f"logit shapes differ: {tuple(logits_p.shape)} vs {tuple(logits_q.shape)}"
        )
    lp = torch.log_softmax(logits_p.double(), dim=-1)
    lq = torch.log_softmax(logits_q.double(), dim=-1)
    return (lp.exp() * (lp - lq)).sum(-1).clamp_min(0.0)


def random_baseline(n: int, n_baseline: int, seed: int) -> np.ndarray:
    """A seeded uniform random subset of min(n_baseline, n) of range(n), ascending."""
    rng = np.random.default_rng(seed)
    size = min(int(n_baseline), int(n))
    return np.sort(rng.choice(n, size=size, replace=False)).astype(np.int64)


def safe_ratio(num: np.ndarray | float, den: np.ndarray | float) -> np.ndarray:
    """num / den with inf where den = 0 < num and NaN where both are 0."""
    num = np.asarray(num, dtype=np.float64)
    den = np.asarray(den, dtype=np.float64)
    with np.errstate(divide="ignore", invalid="ignore"):
        return num / den


def best_sign_index(ratios: np.ndarray) -> np.ndarray:
    """Per row of ``ratios`` [c, 2], the column (0 = +, 1 = −) with the larger ratio; NaN loses."""
    r = np.where(np.isnan(ratios), -np.inf, ratios)
    return np.where(r[:, 1] > r[:, 0], 1, 0).astype(np.int64)


def summary_medians(kl_ratio: np.ndarray, pef_norm_ratio: np.ndarray) -> dict[str, float]:
    """Medians of the KL and PEF-norm ratios, and the share of components with KL ratio > norm ratio."""
    kl_ratio = np.asarray(kl_ratio, dtype=np.float64)
    pef_norm_ratio = np.asarray(pef_norm_ratio, dtype=np.float64)
    ok = np.isfinite(kl_ratio) & np.isfinite(pef_norm_ratio)
    if not ok.any():
        nan = float("nan")
        return {
            "kl_ratio_median": nan,
            "pef_norm_ratio_median": nan,
            "frac_kl_ratio_above_norm_ratio": nan,
            "log2_kl_ratio_median": nan,
            "log2_pef_norm_ratio_median": nan,
            "n_components_scored": 0,
        }
    k, p = kl_ratio[ok], pef_norm_ratio[ok]
    return {
        "kl_ratio_median": float(np.median(k)),
        "pef_norm_ratio_median": float(np.median(p)),
        "frac_kl_ratio_above_norm_ratio": float(np.mean(k > p)),
        "log2_kl_ratio_median": float(np.median(np.log2(np.maximum(k, 1e-300)))),
        "log2_pef_norm_ratio_median": float(np.median(np.log2(np.maximum(p, 1e-300)))),
        "n_components_scored": int(ok.sum()),
    }
