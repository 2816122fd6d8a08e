"""Masks sharded over two processes (Fabric ddp_spawn, gloo on CPU) give the same
attributions file as one process: rank 0 writes every mask in mask order."""

from __future__ import annotations

import h5py
import numpy as np
import pytest

from npeff.artifacts import keys
from npeff.coar import compute_attributions
from tests.helpers.problems import two_class_problem

pytestmark = pytest.mark.slow  # 2 processes


def test_two_processes_equal_one(tmp_path):
    m, _, _, loader = two_class_problem()
    # 150 masks in chunks of 16 over 2 ranks: 5 rounds, the last one ragged (6 masks, rank 1 idle)
    kw = dict(units="l2.weight", alpha=0.2, n_masks=150, chunk_masks=16, masks_per_forward=8)
    compute_attributions(m, loader, tmp_path / "one.h5", progress=False, evaluate=False, **kw)
    compute_attributions(
        m, loader, tmp_path / "two.h5", progress=False, evaluate=False, devices=2, **kw
    )
    with h5py.File(tmp_path / "one.h5") as a, h5py.File(tmp_path / "two.h5") as b:
        assert np.array_equal(a[keys.COAR_MASKS][...], b[keys.COAR_MASKS][...])
        np.testing.assert_allclose(a[keys.COAR_MARGINS][...], b[keys.COAR_MARGINS][...], atol=1e-6)
        np.testing.assert_allclose(a[keys.COAR_WEIGHTS][...], b[keys.COAR_WEIGHTS][...], atol=1e-5)
        assert int(b[keys.NPEFF_GROUP].attrs[keys.ATTR_N_WRITTEN]) == 150
    assert sorted(p.name for p in tmp_path.iterdir()) == ["one.h5", "two.h5"]
