"""D-NPEFF core vs independent references: normalization, brute-force ‖A − WH‖_F, MU
monotonicity, planted non-negative factors, H sparsification and component normalization."""

import numpy as np
import pytest
import scipy.sparse as sp
import torch

from npeff.decomp import diag
from npeff.decomp.kinds import Hyper, build_factorization, run_schedule, schedule
from npeff.decomp.matrix import ColumnBlocks, build_matrix
from npeff.decomp.postprocess import normalize_components, sparsify_h
from npeff.decomp.synthetic import diag_pefs_from_dense, planted_diag_pefs


@pytest.fixture(autouse=True)
def one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def dense_normalized(pefs):
    n, m = pefs.n_examples, pefs.n_parameters
    A = np.zeros((n, m))
    for i in range(n):
        A[i, pefs.indices[i]] = pefs.values[i]
        A[i] /= float(pefs.norms[i]) + 1e-9
    return A


def test_normalization_pruning_and_constant():
    rng = np.random.default_rng(0)
    F = rng.random((6, 10))
    F[:, 3] = 0.0
    pefs = diag_pefs_from_dense(F, K=5)
    mat = build_matrix(pefs, "diag")
    A = dense_normalized(pefs)
    used = np.flatnonzero((A != 0).any(0))
    np.testing.assert_array_equal(mat.new_to_old_col_indices, used)
    np.testing.assert_allclose(mat.A.toarray(), A[:, used], rtol=1e-6)
    assert mat.const == pytest.approx(float((A**2).sum()), rel=1e-6)


def test_loss_equals_brute_force_and_mu_never_increases_it():
    pefs, _, _ = planted_diag_pefs(n=30, m=40, r=3, K=25, seed=1)
    mat = build_matrix(pefs, "diag")
    fac = build_factorization(
        mat, n_components=3, seed=2, hyper=Hyper(mu_eps=1e-12), dtype=torch.float64
    )
    A = mat.A.toarray()
    prev = np.inf
    for _ in range(40):
        brute = float(np.linalg.norm(A - fac.W.numpy() @ fac.Ft.T.numpy()))
        assert fac.loss() == pytest.approx(brute, rel=1e-9)
        assert brute <= prev * (1 + 1e-12)
        prev = brute
        fac.step("joint")
        assert (fac.W >= 0).all() and (fac.Ft >= 0).all()


def test_h_update_alone_never_increases_loss():
    pefs, _, _ = planted_diag_pefs(n=20, m=30, r=3, K=20, seed=4)
    mat = build_matrix(pefs, "diag")
    fac = build_factorization(mat, n_components=3, seed=0, hyper=Hyper(), dtype=torch.float64)
    blocks = ColumnBlocks(mat.A, 0, mat.n_cols, block_cols=7, dtype=torch.float64)
    prev = fac.loss()
    for _ in range(20):
        fac.Ft = diag.h_update(blocks, fac.Ft, fac.W, 1e-12)
        cur = fac.loss()
        assert cur <= prev * (1 + 1e-12)
        prev = cur


def best_cos(learned, planted):
    a = learned / np.linalg.norm(learned, axis=1, keepdims=True)
    b = planted / np.linalg.norm(planted, axis=1, keepdims=True)
    return (b @ a.T).max(1).mean()


def test_planted_nonnegative_factors_are_recovered():
    pefs, W_true, H_true = planted_diag_pefs(n=200, m=120, r=4, K=120, density=0.25, seed=0)
    mat = build_matrix(pefs, "diag")
    fac = build_factorization(
        mat, n_components=4, seed=3, hyper=Hyper(mu_eps=1e-8), dtype=torch.float64
    )
    losses = run_schedule(fac, schedule("diag", 0, 500), log_every=50)
    assert losses["joint"][-1] < losses["joint"][0]
    H = np.zeros((4, mat.n_parameters))
    H[:, mat.new_to_old_col_indices] = fac.Ft.T.numpy()
    assert best_cos(H, H_true) >= 0.95
    # W columns: planted W is on the un-normalized scale; compare directions after row scaling.
    scale = 1.0 / (pefs.norms.astype(np.float64) + 1e-9)
    assert best_cos(fac.W.numpy().T, (W_true * scale[:, None]).T) >= 0.95


def test_component_normalization_keeps_the_product():
    rng = np.random.default_rng(0)
    W, H = rng.random((5, 3)), rng.random((3, 8))
    W2, H2 = normalize_components(W, H, kind="diag")
    np.testing.assert_allclose(np.linalg.norm(H2, axis=1), 1.0)
    np.testing.assert_allclose(W2 @ H2, W @ H)
    G = rng.standard_normal((3, 8))
    W3, G3 = normalize_components(W, G, kind="lrm")
    np.testing.assert_allclose(
        np.einsum("ik,ka,kb->iab", W3, G3, G3), np.einsum("ik,ka,kb->iab", W, G, G), rtol=1e-9
    )


def test_sparsify_h_by_threshold_and_fraction():
    rng = np.random.default_rng(1)
    H = rng.random((3, 50))
    S = sparsify_h(H, threshold=0.1)
    assert sp.isspmatrix_csr(S)
    np.testing.assert_array_equal(S.toarray(), np.where(H >= 0.1, H, 0.0))
    S = sparsify_h(H, keep_fraction=0.2)
    assert S.nnz == 30
    dense = S.toarray()
    for k in range(3):  # the kept entries of each row are its largest ones
        kept = dense[k][dense[k] > 0]
        assert kept.min() >= np.sort(H[k])[-10]
    with pytest.raises(ValueError):
        sparsify_h(H, threshold=0.1, keep_fraction=0.2)


def test_sparsify_decomposition_keeps_reconstruction_of_kept_entries():
    from npeff.artifacts.decomposition import Decomposition
    from npeff.decomp.postprocess import sparsify_decomposition

    rng = np.random.default_rng(2)
    W, H = rng.random((6, 3)), rng.random((3, 20)) * 5
    dec = Decomposition(
        kind="diag", W=W, H=H, new_to_old_col_indices=np.arange(20), n_parameters=20
    )
    out = sparsify_decomposition(dec, threshold=0.0)
    np.testing.assert_allclose(out.W @ out.H.toarray(), W @ H, rtol=1e-5)
    np.testing.assert_allclose(sp.linalg.norm(out.H, axis=1), 1.0, rtol=1e-5)
    assert sparsify_decomposition(dec, keep_fraction=0.25).H.nnz == 15
