"""Convergence of the coefficients (paper §3.3 "Number of Steps", Fig. 5).

The paper saves W every 50 steps and plots the average over components of the cosine similarity
of each coefficient column with its final value; the average passed 0.95 at 700 steps and 0.99 at
1100. A decomposition stores per-snapshot W in ``convergence["snapshots"]`` [s, n, r] (with
``convergence["snapshot_steps"]`` [s]) when its tracker kept them.
"""

from __future__ import annotations

import numpy as np

from npeff.errors import NpeffUserError


def cosine_to_final(snapshots: np.ndarray, final: np.ndarray) -> np.ndarray:
    """Per-component cosine of each snapshot's coefficient columns with the final W.

    Args:
      snapshots: [s, n, r] W saved during the run. final: [n, r] the final W.
    Returns:
      float64 [s, r]; 0 where a column is all zero.
    """
    S = np.asarray(snapshots, dtype=np.float64)
    F = np.asarray(final, dtype=np.float64)
    if S.ndim != 3 or S.shape[1:] != F.shape:
        raise NpeffUserError(
            f"snapshots must be [s, n, r] matching the final W {F.shape}, got {S.shape}"
        )
    num = np.einsum("snr,nr->sr", S, F)
    den = np.linalg.norm(S, axis=1) * np.linalg.norm(F, axis=0)[None, :]
    return np.divide(num, den, out=np.zeros_like(num), where=den > 0)


def first_step_reaching(steps: np.ndarray, values: np.ndarray, level: float) -> int | None:
    """The first step from which ``values`` stays ≥ ``level`` to the end, or None if it never does."""
    steps, values = np.asarray(steps), np.asarray(values, dtype=np.float64)
    below = np.flatnonzero(values < level)
    if below.size == 0:
        return int(steps[0]) if steps.size else None
    nxt = below[-1] + 1
    return int(steps[nxt]) if nxt < steps.size else None
