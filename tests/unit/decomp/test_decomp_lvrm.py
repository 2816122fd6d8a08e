"""LVRM-NPEFF (algorithm.md §5.2): variable-rank PEFs (rank 0 included) decomposed and fitted with
LRM-NPEFF's updates and per-example row counts, against a dense per-example reference built
directly from the file's ranks / col_sizes (no CSR), planted components, and the reference's file
conventions (n_classes = −1)."""

import h5py
import numpy as np
import pytest
import torch

from npeff.artifacts.decomposition import load_decomposition
from npeff.artifacts.pefs import load_pefs, save_pefs
from npeff.decomp import lrm
from npeff.decomp.fitting import fit_coefficients
from npeff.decomp.kinds import Hyper, build_factorization
from npeff.decomp.matrix import ColumnBlocks, build_matrix
from npeff.decomp.module import DecompSettings
from npeff.decomp.runner import decompose
from npeff.decomp.synthetic import planted_lrm_pefs
from npeff.fisher.synthetic import planted_lvrm_pefs


@pytest.fixture(autouse=True)
def one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def dense_factors(pefs) -> list[np.ndarray]:
    """Ã_i [R_i, m] per example, walking ranks/col_sizes one row at a time (values past the rows
    are padding), divided by sqrt(max(‖F_i‖_F, 1e-6))."""
    out, row = [], 0
    for i in range(pefs.n_examples):
        a = np.zeros((int(pefs.ranks[i]), pefs.n_parameters))
        pos = 0
        for c in range(int(pefs.ranks[i])):
            size = int(pefs.col_sizes[row])
            for t in range(pos, pos + size):
                a[c, pefs.indices[i, t]] += pefs.values[i, t]
            pos += size
            row += 1
        assert np.all(pefs.values[i, pos:] == 0), "values past the rows are explicit zeros"
        out.append(a / np.sqrt(max(float(pefs.norms[i]), 1e-6)))
    return out


def brute_loss(factors, W, G):
    """Σ_i ‖Ã_iᵀÃ_i − Σ_k W_ik g_k g_kᵀ‖²_F with m×m matrices (torch, differentiable)."""
    total = 0.0
    for i, a in enumerate(factors):
        a = torch.as_tensor(a)
        F = a.T @ a
        R = (G.T * W[i]) @ G
        total = total + ((F - R) ** 2).sum()
    return total


@pytest.fixture(scope="module")
def small():
    pefs, _ = planted_lvrm_pefs(n=14, m=9, max_rank=3, r=3, K=16, p_rank0=0.25, seed=2)
    assert (pefs.ranks == 0).any() and (pefs.ranks * 9 < 16).any()  # rank 0 and padding
    return pefs


def test_matrix_rows_constant_and_loss_match_dense_reference(small):
    pefs = small
    factors = dense_factors(pefs)
    mat = build_matrix(pefs, "lrm", min_nonzero_per_col=1)
    assert mat.n_classes == -1 and mat.A.shape[0] == int(pefs.ranks.sum())
    np.testing.assert_array_equal(np.bincount(mat.row_example, minlength=14), pefs.ranks)
    full = np.zeros((mat.A.shape[0], pefs.n_parameters))
    full[:, mat.new_to_old_col_indices] = mat.A.toarray()
    np.testing.assert_allclose(full, np.concatenate(factors), atol=1e-7)
    T = sum(float(((a @ a.T) ** 2).sum()) for a in factors)
    np.testing.assert_allclose(mat.const, T, rtol=1e-10)

    rng = np.random.default_rng(0)
    W = torch.as_tensor(rng.random((14, 3)) + 0.1, dtype=torch.float64).requires_grad_(True)
    Gr = torch.as_tensor(rng.standard_normal((3, mat.n_cols)), dtype=torch.float64)
    G = torch.zeros(3, pefs.n_parameters, dtype=torch.float64)
    G[:, mat.new_to_old_col_indices] = Gr
    G.requires_grad_(True)
    ref = brute_loss(factors, W, G)
    ref.backward()

    blocks = ColumnBlocks(mat.A, 0, mat.n_cols, block_cols=4, dtype=torch.float64)
    Gt = Gr.T.contiguous()
    P, S = lrm.products(blocks, Gt)
    Wd = W.detach()
    N = lrm.numerator(P, 14, mat.rows)
    np.testing.assert_allclose(lrm.loss(mat.const, Wd, N, S), ref.item(), rtol=1e-9)
    # ∂L/∂W = −2N + 2W(S∘S); ∂L/∂G = 4[(WᵀW∘S)G − QᵀA]
    np.testing.assert_allclose(-2 * N + 2 * Wd @ (S * S), W.grad, rtol=1e-8, atol=1e-10)
    grad_t = lrm.g_gradient_t(blocks, Gt, Wd, P, S, 14, mat.rows)
    np.testing.assert_allclose(
        grad_t.T, G.grad[:, mat.new_to_old_col_indices], rtol=1e-8, atol=1e-10
    )
    # rank-0 examples have N = 0: the multiplicative update sends their W rows to 0
    assert torch.all(N[torch.as_tensor(pefs.ranks == 0)] == 0)


def best_abs_cos(learned, planted):
    a = learned / np.linalg.norm(learned, axis=1, keepdims=True)
    b = planted / np.linalg.norm(planted, axis=1, keepdims=True)
    return float(np.abs(b @ a.T).max(1).mean())


@pytest.fixture(scope="module")
def planted(tmp_path_factory):
    torch.set_num_threads(1)
    pefs, G_true = planted_lvrm_pefs(
        n=150, m=60, max_rank=3, r=5, K=110, p_rank0=0.15, noise=0.02, seed=0
    )
    path = save_pefs(pefs, tmp_path_factory.mktemp("pefs") / "pefs.h5")
    s = DecompSettings(
        kind="lrm",
        n_components=5,
        n_iters_g_only=20,
        n_iters_joint=200,
        lr_g=3e-3,
        seed=5,
        dtype="float64",
        block_cols=16,
    )
    out = tmp_path_factory.mktemp("dec")
    dec = decompose(path, s, out, progress=False)
    return load_pefs(path), G_true, dec, out


def test_planted_components_are_recovered_from_a_file(planted):
    pefs, G_true, dec, out = planted
    assert (pefs.ranks == 0).sum() > 10 and set(np.unique(pefs.ranks)) == {0, 1, 2, 3}
    G = np.zeros((5, pefs.n_parameters))
    G[:, dec.new_to_old_col_indices] = dec.G
    assert best_abs_cos(G, G_true) >= 0.95
    assert np.all(dec.W[pefs.ranks == 0] == 0), "rank-0 examples contribute nothing"
    assert dec.losses["joint"][-1] < dec.losses["G_only"][0] / 20
    # the reference's LVRM decomposition file: n_classes = −1, W/G/index map names
    with h5py.File(out / "decomposition.h5", "r") as f:
        assert int(f["data"].attrs["n_classes"]) == -1
        for name in ("data/W", "data/G", "data/new_to_old_col_indices", "losses/joint"):
            assert name in f
    assert load_decomposition(out / "decomposition.h5").n_classes == -1


def test_fit_on_the_same_pefs_converges_to_the_decompositions_w(planted):
    pefs, _, dec, _ = planted
    fitted, info = fit_coefficients(pefs, dec, n_iters=2000, dtype=torch.float64, seed=3)
    err = np.linalg.norm(fitted.W - dec.W) / np.linalg.norm(dec.W)
    assert err < 1e-2, err
    assert info["final_loss"] <= dec.metadata["final_loss"] * (1 + 1e-4)
    assert fitted.n_classes == -1
    # chunks cut across examples of every rank (incl. 0); the last chunk is short (150 = 4·37 + 2)
    one, _ = fit_coefficients(pefs, dec, n_iters=30, dtype=torch.float64, seed=4)
    chunked, cinfo = fit_coefficients(
        pefs, dec, n_iters=30, dtype=torch.float64, seed=4, chunk_size=37
    )
    assert cinfo["n_chunks"] == 5
    W0 = np.random.default_rng(1).random(dec.W.shape) + 0.1
    a, _ = fit_coefficients(pefs, dec, n_iters=30, dtype=torch.float64, W_init=W0)
    b, _ = fit_coefficients(pefs, dec, n_iters=30, dtype=torch.float64, W_init=W0, chunk_size=37)
    np.testing.assert_allclose(a.W, b.W, rtol=1e-6)
    assert one.W.shape == chunked.W.shape == dec.W.shape


def test_one_fit_iteration_equals_the_joint_w_update(planted):
    pefs, _, dec, _ = planted
    W0 = np.random.default_rng(0).random(dec.W.shape) + 0.1
    fitted, _ = fit_coefficients(pefs, dec, n_iters=1, W_init=W0, dtype=torch.float64)
    mat = build_matrix(pefs, "lrm", col_map=dec.new_to_old_col_indices)
    factors = dense_factors(pefs)
    G = np.asarray(dec.G, dtype=np.float64)
    Gfull = np.zeros((5, pefs.n_parameters))
    Gfull[:, mat.new_to_old_col_indices] = G
    N = np.stack([((a @ Gfull.T) ** 2).sum(0) for a in factors])  # g_kᵀ F̃_i g_k
    S = G @ G.T
    expected = W0 * N / (W0 @ (S * S) + 1e-9)
    np.testing.assert_allclose(fitted.W, expected, rtol=1e-5)


def test_lvrm_and_lrm_do_not_mix_in_fitting(planted, tmp_path):
    pefs, _, dec, _ = planted
    lrm_pefs, _ = planted_lrm_pefs(n=10, m=60, C=2, r=3, K=40, seed=1)
    with pytest.raises(ValueError, match="LVRM"):
        fit_coefficients(lrm_pefs, dec, n_iters=2)


def test_factorization_on_lvrm_decreases_loss_with_ortho(small):
    mat = build_matrix(small, "lrm")
    fac = build_factorization(
        mat, n_components=3, seed=1, hyper=Hyper(lr_g=1e-2, ortho_strength=0.1), dtype=torch.float64
    )
    first = fac.loss()
    for _ in range(30):
        fac.step("joint")
    assert fac.loss() < first
