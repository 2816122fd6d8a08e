"""A diverging decomposition stops with one line naming the learning rate to lower, and writes no
decomposition file (NaN components would pass for a result in every later stage)."""

from __future__ import annotations

import numpy as np
import pytest

from npeff.decomp.module import DecompSettings
from npeff.decomp.runner import decompose
from npeff.decomp.synthetic import planted_lrm_pefs

LRM = dict(kind="lrm", n_components=3, n_iters_g_only=6, n_iters_joint=24, log_every=3)


def test_a_diverging_learning_rate_is_named(tmp_path):
    pefs, _ = planted_lrm_pefs(n=30, m=25, C=2, r=3, K=40, seed=1)
    with pytest.raises(ValueError, match=r"diverged: loss (nan|inf).*lower decomp\.lr_g") as err:
        decompose(pefs, DecompSettings(**LRM, lr_g=1e6), tmp_path / "bad", progress=False)
    assert "\n" not in str(err.value)
    assert not (tmp_path / "bad" / "decomposition.h5").exists()
    ok = decompose(pefs, DecompSettings(**LRM, lr_g=3e-3), tmp_path / "ok", progress=False)
    assert np.isfinite(ok.W).all() and np.isfinite(ok.G).all()
