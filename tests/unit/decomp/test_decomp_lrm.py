"""LRM-NPEFF core vs independent references: brute-force loss, finite differences, MU
monotonicity, planted-component recovery, preprocessing (pruning, T, normalization)."""

import numpy as np
import pytest
import torch

from npeff.decomp import lrm
from npeff.decomp.kinds import Hyper, build_factorization, run_schedule, schedule
from npeff.decomp.matrix import ColumnBlocks, build_matrix
from npeff.decomp.synthetic import lrm_pefs_from_dense, planted_lrm_pefs


@pytest.fixture(autouse=True)
def one_thread():
    """Tiny problems: intra-op threads only add overhead on a shared 2-core machine."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def dense_normalized_pefs(pefs):
    """Reference: F̃_i = Ã_iᵀÃ_i [n, m, m] straight from the stored (values, indices, offsets)."""
    n, m = pefs.n_examples, pefs.n_parameters
    C = pefs.col_offsets.shape[1] - 1
    F = np.zeros((n, m, m))
    for i in range(n):
        A = np.zeros((C, m))
        for c in range(C):
            s, e = pefs.col_offsets[i, c], pefs.col_offsets[i, c + 1]
            A[c, pefs.indices[i, s:e]] += pefs.values[i, s:e]
        A /= np.sqrt(max(float(pefs.norms[i]), 1e-12))
        F[i] = A.T @ A
    return F


def brute_force_loss(F, W, G_full):
    recon = np.einsum("ik,ka,kb->iab", W, G_full, G_full)
    return float(((F - recon) ** 2).sum())


@pytest.fixture
def small():
    rng = np.random.default_rng(0)
    A = rng.standard_normal((7, 3, 12))
    A[:, :, 5] = 0.0  # a never-selected column: pruned
    pefs = lrm_pefs_from_dense(A, K=20)
    mat = build_matrix(pefs, "lrm")
    r = 4
    W = torch.rand(7, r, dtype=torch.float64, generator=torch.Generator().manual_seed(1)) + 0.1
    Gt = torch.randn(mat.n_cols, r, dtype=torch.float64, generator=torch.Generator().manual_seed(2))
    blocks = ColumnBlocks(mat.A, 0, mat.n_cols, block_cols=4, dtype=torch.float64)
    return pefs, mat, blocks, W, Gt


def full_g(mat, Gt):
    G = np.zeros((Gt.shape[1], mat.n_parameters))
    G[:, mat.new_to_old_col_indices] = Gt.T.numpy()
    return G


def closed_form(mat, blocks, W, Gt):
    P, S = lrm.products(blocks, Gt)
    return lrm.loss(mat.const, W, lrm.numerator(P, mat.n_examples, mat.n_classes), S)


def test_pruning_drops_empty_columns_and_keeps_order(small):
    pefs, mat, *_ = small
    used = np.unique(pefs.indices)
    assert 5 not in mat.new_to_old_col_indices
    np.testing.assert_array_equal(mat.new_to_old_col_indices, used)
    assert mat.A.nnz == pefs.values.size  # default threshold 1 keeps every stored entry


def test_min_nonzero_per_col_counts_class_rows():
    A = np.zeros((2, 2, 4))
    A[0, 0, 0] = A[0, 1, 0] = 1.0  # column 0: two class rows of one example
    A[1, 0, 1] = 1.0  # column 1: one row
    A[:, :, 2] = 0.5  # column 2: four rows
    pefs = lrm_pefs_from_dense(A, K=3)
    mat = build_matrix(pefs, "lrm", min_nonzero_per_col=2)
    np.testing.assert_array_equal(mat.new_to_old_col_indices, [0, 2])


def test_constant_T_is_sum_of_squared_grams(small):
    pefs, mat, *_ = small
    F = dense_normalized_pefs(pefs)
    assert mat.const == pytest.approx(float((F**2).sum()), rel=1e-12)


def test_closed_form_loss_equals_brute_force(small):
    pefs, mat, blocks, W, Gt = small
    F = dense_normalized_pefs(pefs)
    expected = brute_force_loss(F, W.numpy(), full_g(mat, Gt))
    assert closed_form(mat, blocks, W, Gt) == pytest.approx(expected, rel=1e-10)


def test_g_gradient_equals_finite_differences(small):
    pefs, mat, blocks, W, Gt = small
    F = dense_normalized_pefs(pefs)
    P, S = lrm.products(blocks, Gt)
    grad = lrm.g_gradient_t(blocks, Gt, W, P, S, mat.n_examples, mat.n_classes)
    h = 1e-6
    rng = np.random.default_rng(3)
    for _ in range(8):
        j, k = int(rng.integers(mat.n_cols)), int(rng.integers(Gt.shape[1]))
        plus, minus = Gt.clone(), Gt.clone()
        plus[j, k] += h
        minus[j, k] -= h
        fd = (
            brute_force_loss(F, W.numpy(), full_g(mat, plus))
            - brute_force_loss(F, W.numpy(), full_g(mat, minus))
        ) / (2 * h)
        assert float(grad[j, k]) == pytest.approx(fd, rel=1e-5, abs=1e-7)


def test_partial_g_gradient_matches_full_rows(small):
    _, mat, blocks, W, Gt = small
    P, S = lrm.products(blocks, Gt)
    full = lrm.g_gradient_t(blocks, Gt, W, P, S, mat.n_examples, mat.n_classes)
    part = lrm.g_gradient_t(blocks, Gt, W, P, S, mat.n_examples, mat.n_classes, n_rows=2)
    torch.testing.assert_close(part, full[:, :2])


def test_ortho_gradient_equals_finite_differences(small):
    *_, Gt = small
    s, r = 0.3, Gt.shape[1]

    def reg(gt):
        G = gt.T
        return float(s * ((G @ G.T - (2.0 / r) * torch.eye(r, dtype=G.dtype)) ** 2).sum())

    grad = lrm.ortho_gradient_t(Gt, Gt.T @ Gt, s)
    h = 1e-6
    for j, k in [(0, 0), (3, 2), (7, 1)]:
        plus, minus = Gt.clone(), Gt.clone()
        plus[j, k] += h
        minus[j, k] -= h
        assert float(grad[j, k]) == pytest.approx((reg(plus) - reg(minus)) / (2 * h), rel=1e-5)


def test_w_update_never_increases_loss(small):
    _, mat, blocks, W, Gt = small
    P, S = lrm.products(blocks, Gt)
    N = lrm.numerator(P, mat.n_examples, mat.n_classes)
    prev = lrm.loss(mat.const, W, N, S)
    for _ in range(30):
        W = lrm.w_update(W, N, S, eps=1e-9)
        cur = lrm.loss(mat.const, W, N, S)
        assert cur <= prev + 1e-9 * abs(prev)
        assert (W >= 0).all()
        prev = cur


def test_column_blocks_match_full_products(small):
    _, mat, blocks, W, Gt = small
    Q = torch.randn(mat.A.shape[0], 4, dtype=torch.float64)
    A = torch.from_numpy(mat.A.toarray())
    torch.testing.assert_close(blocks.mm_t(Gt), A @ Gt)
    torch.testing.assert_close(blocks.rmm(Q), A.T @ Q)


def best_abs_cos(learned, planted):
    a = learned / np.linalg.norm(learned, axis=1, keepdims=True)
    b = planted / np.linalg.norm(planted, axis=1, keepdims=True)
    return np.abs(b @ a.T).max(1).mean()


def test_planted_rank1_components_are_recovered():
    pefs, G_true = planted_lrm_pefs(n=150, m=60, C=2, r=4, K=110, noise=0.02, seed=0)
    mat = build_matrix(pefs, "lrm")
    fac = build_factorization(
        mat, n_components=4, seed=5, hyper=Hyper(lr_g=3e-3), dtype=torch.float64, block_cols=16
    )
    losses = run_schedule(fac, schedule("lrm", 20, 150), log_every=10)
    assert losses["joint"][-1] < losses["G_only"][0]
    G = np.zeros((4, mat.n_parameters))
    G[:, mat.new_to_old_col_indices] = fac.Ft.T.numpy()
    assert best_abs_cos(G, G_true) >= 0.95


def test_n_components_larger_than_examples_is_an_error(small):
    _, mat, *_ = small
    with pytest.raises(ValueError, match="larger than the number of examples"):
        build_factorization(mat, n_components=8, seed=0, hyper=Hyper())


def test_wrong_pef_kind_is_an_error(small):
    pefs = small[0]
    with pytest.raises(ValueError, match="decomp=lrm_npeff"):
        build_matrix(pefs, "diag")


@pytest.mark.parametrize("strength", [0.0, 0.2])
def test_fused_g_step_equals_gradient_step(small, strength):
    _, mat, blocks, W, Gt = small
    P, S = lrm.products(blocks, Gt)
    lr = 1e-2
    grad = lrm.g_gradient_t(blocks, Gt, W, P, S, mat.n_examples, mat.n_classes)
    grad = grad + lrm.ortho_gradient_t(Gt, S, strength)
    fused = lrm.g_step_t(blocks, Gt, W, P, S, mat.n_examples, mat.n_classes, lr, strength)
    torch.testing.assert_close(fused, Gt - lr * grad)
