"""Sparsification and norms against brute force on random dense rows."""

from __future__ import annotations

import numpy as np
import torch

from npeff.fisher.sparsify import gram_frobenius_norms, sparsify_diag, sparsify_rows


def test_sparsify_rows_brute_force():
    g = torch.Generator().manual_seed(0)
    rows = torch.randn(3, 4, 10, generator=g, dtype=torch.float64)
    rows[0, 2] = 0.0  # explicit zeros may be kept only after every non-zero
    sp = sparsify_rows(rows, 7)
    for b in range(3):
        flat = rows[b].reshape(-1).numpy()
        top = set(np.argsort(-np.abs(flat), kind="stable")[:7].tolist())
        stored = set(
            (
                np.repeat(np.arange(4), sp.counts[b].numpy()) * 10 + sp.row_indices[b].numpy()
            ).tolist()
        )
        assert stored == top
        assert sp.counts[b].sum() == 7
        np.testing.assert_array_equal(sp.values[b].numpy(), flat[sorted(top)])
        dense_f = rows[b].T @ rows[b]
        np.testing.assert_allclose(sp.norms[b], torch.linalg.norm(dense_f), rtol=1e-12)


def test_sparsify_rows_respects_ranks():
    rows = torch.arange(1.0, 31.0).reshape(1, 3, 10).repeat(2, 1, 1)
    sp = sparsify_rows(rows, 5, ranks=torch.tensor([1, 2]))
    # rank 1: only row 0 (values 1..10) competes → its 5 largest; rank 2: the row-1 entries 16..20
    np.testing.assert_array_equal(sp.values[0].numpy(), [6, 7, 8, 9, 10])
    np.testing.assert_array_equal(sp.counts[0].numpy(), [5, 0, 0])
    np.testing.assert_array_equal(sp.values[1].numpy(), [16, 17, 18, 19, 20])
    np.testing.assert_array_equal(sp.counts[1].numpy(), [0, 5, 0])


def test_sparsify_rows_pads_low_ranks_with_explicit_zeros():
    rows = torch.arange(1.0, 31.0).reshape(1, 3, 10).repeat(2, 1, 1)
    sp = sparsify_rows(rows, 15, ranks=torch.tensor([0, 1]))
    # rank 0: no rows, K explicit zeros; rank 1: row 0's 10 entries, then 5 explicit zeros
    np.testing.assert_array_equal(sp.values[0].numpy(), np.zeros(15))
    np.testing.assert_array_equal(sp.counts[0].numpy(), [0, 0, 0])
    np.testing.assert_array_equal(sp.values[1].numpy(), [*range(1, 11), 0, 0, 0, 0, 0])
    np.testing.assert_array_equal(sp.row_indices[1].numpy(), [*range(10), 0, 0, 0, 0, 0])
    np.testing.assert_array_equal(sp.counts[1].numpy(), [10, 0, 0])


def test_sparsify_diag_and_gram_norm():
    f = torch.rand(4, 50, dtype=torch.float64)
    sp = sparsify_diag(f, 6)
    for b in range(4):
        order = np.argsort(-f[b].numpy())[:6]
        np.testing.assert_array_equal(sp.indices[b].numpy(), order)
        assert (np.diff(sp.values[b].numpy()) <= 0).all()
        np.testing.assert_allclose(sp.norms[b], np.linalg.norm(f[b].numpy()))
    a = torch.randn(2, 3, 5, dtype=torch.float64)
    for b in range(2):
        np.testing.assert_allclose(gram_frobenius_norms(a)[b], torch.linalg.norm(a[b].T @ a[b]))


def test_blocked_top_k_equals_torch_topk():
    """The blocked selection (N ≫ k) keeps exactly torch.topk's values, with ties, negatives,
    a ragged tail, and the largest entries crowded into a few blocks."""
    from npeff.fisher.sparsify import top_k

    g = torch.Generator().manual_seed(0)
    for n, k in [(10_007, 50), (85_002, 1000), (4_000, 37)]:
        x = torch.randn(5, n, generator=g)
        x[0, : n // 2] = 0.0  # many ties at zero
        x[1] = x[1].round()  # ties everywhere
        x[2, :] = -1.0
        x[2, -3:] = 5.0  # the largest only in the tail
        s = int((n / k) ** 0.5)
        x[3, torch.arange(7) * (n // s)] = 100.0  # all large entries in one strided block
        x[4, 3] = float("nan")
        for absolute in (False, True):
            scores = x.abs() if absolute else x
            ref = torch.topk(scores, k, dim=1, sorted=True).values
            values, idx = top_k(x, k, absolute=absolute, sorted=True)
            torch.testing.assert_close(values, ref, rtol=0, atol=0, equal_nan=True)
            torch.testing.assert_close(torch.gather(scores, 1, idx), values, equal_nan=True)
            assert all(len(set(r.tolist())) == k for r in idx)  # no index twice
            unsorted, _ = top_k(x, k, absolute=absolute)
            torch.testing.assert_close(
                unsorted.sort(dim=1, descending=True).values, ref, equal_nan=True
            )
