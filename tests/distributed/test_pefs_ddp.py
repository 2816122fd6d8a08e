"""Two processes (Fabric ddp_spawn, gloo on CPU) give the same PEF file as one process."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from npeff.artifacts.pefs import load_dataset_fisher, load_pefs
from npeff.fisher import compute_pefs
from npeff.fisher.distributed import compute_pefs_multiprocess, shard_bounds
from tests.helpers.problems import problem
from tests.helpers.references import assert_same_pefs


def test_shard_bounds_cover_in_order():
    for n in (0, 1, 5, 7, 100):
        for w in (1, 2, 3):
            b = [shard_bounds(n, w, r) for r in range(w)]
            assert b[0][0] == 0 and b[-1][1] == n
            assert all(b[r][1] == b[r + 1][0] for r in range(w - 1))


@pytest.mark.slow
def test_two_processes_equal_one(tmp_path):
    """LVRM (ragged col_sizes) and a sampled dataset Fisher: the hardest merge."""
    kind, sel = "lvrm", {"min_prob_class": 0.2, "max_classes": 3}
    model, ds = problem("mlp", n=9)
    loader = torch.utils.data.DataLoader(ds, batch_size=2)
    kw = dict(kind=kind, n_values=9, progress=False, dataset_fisher="sampling", seed=5, **sel)
    one = compute_pefs(model, loader, tmp_path / "one" / "pefs.h5", **kw)
    two = compute_pefs_multiprocess(
        model, loader, tmp_path / "two" / "pefs.h5", devices=2, strategy="ddp_spawn", **kw
    )
    a, b = load_pefs(one), load_pefs(two)
    assert_same_pefs(a, b)
    assert a.metadata["fingerprint"] == b.metadata["fingerprint"]
    np.testing.assert_allclose(
        load_dataset_fisher(tmp_path / "one" / "dsf.h5"),
        load_dataset_fisher(tmp_path / "two" / "dsf.h5"),
        rtol=1e-6,
        atol=1e-12,
    )
    assert sorted(p.name for p in (tmp_path / "two").iterdir()) == ["dsf.h5", "pefs.h5"]
