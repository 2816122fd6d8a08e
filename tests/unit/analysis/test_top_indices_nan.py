"""top_indices on coefficients with NaNs (a diverged component): NaN ranks below every number,
in both the sort branch (4k >= n) and the partition branch (4k < n)."""

from __future__ import annotations

import numpy as np
import pytest

from npeff.analysis.top_examples import top_indices


def _brute(W: np.ndarray, k: int) -> np.ndarray:
    out = []
    for j in range(W.shape[1]):
        col = [(-np.inf if np.isnan(v) else v, i) for i, v in enumerate(W[:, j])]
        out.append([i for _, i in sorted(col, key=lambda t: (-t[0], t[1]))[:k]])
    return np.asarray(out)


@pytest.mark.parametrize("k", [3, 40])
def test_nan_coefficients_rank_last(k):
    rng = np.random.default_rng(0)
    W = rng.random((60, 4)).round(1)  # ties
    W[rng.random(W.shape) < 0.3] = np.nan
    W[:, 2] = np.nan  # a whole diverged column
    top = top_indices(W, k)
    assert top.shape == (4, k)
    np.testing.assert_array_equal(top, _brute(W, k))
