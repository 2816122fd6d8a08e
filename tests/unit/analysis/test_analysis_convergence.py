"""Convergence to the final W (paper Fig. 5) vs brute force."""

import numpy as np
import pytest

from npeff.analysis import cosine_to_final, first_step_reaching


def test_cosine_to_final_matches_brute_force():
    rng = np.random.default_rng(0)
    final = rng.random((15, 4))
    snaps = rng.random((5, 15, 4))
    snaps[2, :, 1] = 0.0
    got = cosine_to_final(snaps, final)
    for s in range(5):
        for k in range(4):
            a, b = snaps[s, :, k], final[:, k]
            want = 0.0 if not a.any() else float(a @ b / np.linalg.norm(a) / np.linalg.norm(b))
            assert got[s, k] == pytest.approx(want)
    assert np.allclose(cosine_to_final(final[None] * 3.0, final), 1.0)
    with pytest.raises(ValueError, match="snapshots must be"):
        cosine_to_final(snaps[:, :10], final)


def test_first_step_reaching_requires_staying_above():
    steps = np.array([0, 50, 100, 150, 200])
    assert first_step_reaching(steps, [0.5, 0.96, 0.9, 0.97, 0.99], 0.95) == 150
    assert first_step_reaching(steps, [0.96] * 5, 0.95) == 0
    assert first_step_reaching(steps, [0.5, 0.6, 0.7, 0.8, 0.9], 0.95) is None
