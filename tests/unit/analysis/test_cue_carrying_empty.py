"""cue_carrying with no component to test returns every key of the non-empty result (the shortcut
stage reads them all), its figures undefined."""

from __future__ import annotations

import numpy as np

from npeff.analysis.shortcut import cue_carrying


def test_empty_components_have_the_same_keys():
    rng = np.random.default_rng(0)
    W, cue = rng.random((40, 3)), rng.random(40) < 0.5
    full = cue_carrying(W, np.array([0, 1]), cue, k=8, n_shuffles=5)
    empty = cue_carrying(W, np.array([], dtype=np.int64), cue, k=8, n_shuffles=5)
    assert set(empty) == set(full)
    assert np.isnan(empty["frac"]) and empty["p_value"] is None and empty["carrying"] == []
