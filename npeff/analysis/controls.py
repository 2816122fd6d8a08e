"""Shuffled controls: a statistic recomputed on permuted data, its null distribution and p-value.

One implementation for every "shuffled control" in npeff (concept statistic, cue carriers,
coset and irrep purity, cross-run matching). A permutation ``perm`` of ``range(n)`` means
"example i gets the data of example ``perm[i]``" (e.g. the rows of W permuted). It is drawn
from ``np.random.default_rng(seed)``, once per shuffle, in order:

- default: ``rng.permutation(n)``;
- ``strata`` [n]: within each stratum (values in ascending order), as
  :func:`npeff.analysis.concepts.permutation`;
- ``movable`` bool [n]: only the marked positions are permuted among themselves.

The key layout of a control named ``name`` (:meth:`ShuffledControl.metrics`):
``{name, name_shuffled_mean, name_shuffled_max, name_p_value, n_shuffles}``; the p-value is
``(1 + #{shuffled >= observed}) / (1 + n_shuffles)`` (one-sided, never 0).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from npeff.errors import NpeffUserError


def draw_permutation(
    rng: np.random.Generator,
    n: int,
    strata: np.ndarray | None = None,
    movable: np.ndarray | None = None,
) -> np.ndarray:
    """int64 [n]: a random permutation of range(n) (see the module doc for the three kinds)."""
    if strata is not None and movable is not None:
        raise NpeffUserError("give strata or movable, not both")
    if movable is not None:
        movable = np.asarray(movable, dtype=bool)
        if movable.shape != (n,):
            raise NpeffUserError(f"movable must have shape ({n},), got {movable.shape}")
        idx = np.flatnonzero(movable)
        perm = np.arange(n)
        perm[idx] = idx[rng.permutation(idx.size)]
        return perm
    if strata is None:
        return rng.permutation(n)
    strata = np.asarray(strata)
    if strata.shape != (n,):
        raise NpeffUserError(f"strata must have shape ({n},), got {strata.shape}")
    perm = np.arange(n)
    for value in np.unique(strata):
        members = np.flatnonzero(strata == value)
        perm[members] = members[rng.permutation(members.size)]
    return perm


@dataclass
class ShuffledControl:
    """``observed`` (scalar or array [...]) next to ``shuffled`` [n_shuffles, ...]."""

    observed: np.ndarray | float
    shuffled: np.ndarray

    @property
    def n_shuffles(self) -> int:
        return int(self.shuffled.shape[0])

    def mean(self):
        """Mean over the shuffles (float, or array [...]); None without shuffles."""
        return None if self.n_shuffles == 0 else _plain(self.shuffled.mean(axis=0))

    def max(self):
        return None if self.n_shuffles == 0 else _plain(self.shuffled.max(axis=0))

    def p_value(self):
        """``(1 + #{shuffled >= observed}) / (1 + n_shuffles)`` (float, or array [...])."""
        hits = (self.shuffled >= np.asarray(self.observed)).sum(axis=0)
        return _plain((1 + hits) / (1 + self.n_shuffles))

    def metrics(self, name: str) -> dict:
        """The one key layout: observed, shuffled mean and max, p-value, number of shuffles."""
        return {
            name: _plain(np.asarray(self.observed)),
            f"{name}_shuffled_mean": self.mean(),
            f"{name}_shuffled_max": self.max(),
            f"{name}_p_value": self.p_value(),
            "n_shuffles": self.n_shuffles,
        }


def _plain(x):
    x = np.asarray(x)
    return x.item() if x.ndim == 0 else x


def shuffled_control(
    statistic: Callable[[np.ndarray], float | np.ndarray],
    n: int,
    n_shuffles: int,
    seed: int = 0,
    *,
    observed: float | np.ndarray | None = None,
    strata: np.ndarray | None = None,
    movable: np.ndarray | None = None,
) -> ShuffledControl:
    """``statistic(perm)`` for ``n_shuffles`` seeded permutations of range(n).

    ``statistic`` maps a permutation int [n] to a number or an array [...] (the same shape
    each time); ``observed`` defaults to ``statistic(arange(n))``. Returns the
    :class:`ShuffledControl` with ``shuffled`` [n_shuffles, ...] (dtype of the values).
    """
    rng = np.random.default_rng(seed)
    values = [statistic(draw_permutation(rng, n, strata, movable)) for _ in range(int(n_shuffles))]
    if observed is None:
        observed = statistic(np.arange(n))
    obs = np.asarray(observed)
    shuffled = np.asarray(values) if values else np.zeros((0, *obs.shape), dtype=obs.dtype)
    return ShuffledControl(observed=observed, shuffled=shuffled)
