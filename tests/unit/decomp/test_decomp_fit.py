"""Coefficient fitting with frozen G/H: equals the joint W update, chunking (last chunk), index
map, convergence to the decomposition's own W, sparse H, clear errors."""

import numpy as np
import pytest
import scipy.sparse as sp
import torch

from npeff.decomp import lrm
from npeff.decomp.fitting import fit_coefficients
from npeff.decomp.kinds import Hyper, build_factorization, run_schedule, schedule
from npeff.decomp.matrix import build_matrix
from npeff.decomp.module import DecompSettings
from npeff.decomp.runner import decompose
from npeff.decomp.synthetic import planted_diag_pefs, planted_lrm_pefs


@pytest.fixture(autouse=True)
def one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def lrm_run(tmp_path_factory):
    torch.set_num_threads(1)
    pefs, _ = planted_lrm_pefs(n=41, m=30, C=2, r=3, K=45, noise=0.05, seed=3)
    s = DecompSettings(
        kind="lrm", n_components=3, n_iters_g_only=20, n_iters_joint=400, lr_g=3e-3, dtype="float64"
    )
    dec = decompose(pefs, s, tmp_path_factory.mktemp("lrm"), progress=False)
    return pefs, dec


def test_one_fit_iteration_equals_the_joint_w_update(lrm_run):
    pefs, dec = lrm_run
    W0 = np.random.default_rng(0).random((pefs.n_examples, 3)) + 0.1
    fitted, _ = fit_coefficients(pefs, dec, n_iters=1, W_init=W0, dtype=torch.float64)
    mat = build_matrix(pefs, "lrm", col_map=dec.new_to_old_col_indices)
    Gt = torch.from_numpy(dec.G.astype(np.float64).T.copy())
    P = torch.from_numpy(mat.A.toarray()) @ Gt
    S = Gt.T @ Gt
    expected = lrm.w_update(torch.from_numpy(W0), lrm.numerator(P, mat.n_examples, 2), S, 1e-9)
    np.testing.assert_allclose(fitted.W, expected.numpy(), rtol=1e-5)


def test_fit_on_own_pefs_converges_to_its_w(lrm_run):
    pefs, dec = lrm_run
    fitted, info = fit_coefficients(pefs, dec, n_iters=3000, dtype=torch.float64, seed=11)
    err = np.linalg.norm(fitted.W - dec.W) / np.linalg.norm(dec.W)
    assert err < 1e-2
    np.testing.assert_array_equal(fitted.G, dec.G)
    assert info["final_loss"] <= dec.losses["joint"][-1] * (1 + 1e-4)


def test_chunks_with_a_short_last_chunk_equal_one_chunk(lrm_run):
    pefs, dec = lrm_run  # n = 41: chunks of 10 leave a last chunk of 1
    one, _ = fit_coefficients(pefs, dec, n_iters=20, dtype=torch.float64, seed=4)
    many, info = fit_coefficients(pefs, dec, n_iters=20, dtype=torch.float64, seed=4, chunk_size=10)
    assert info["n_chunks"] == 5 and many.W.shape == one.W.shape
    np.testing.assert_allclose(many.W, one.W, rtol=1e-6)


def test_columns_outside_the_index_map_are_dropped(lrm_run):
    pefs, dec = lrm_run
    keep = dec.new_to_old_col_indices[::2]
    sub = type(dec)(**{**dec.__dict__, "new_to_old_col_indices": keep, "G": dec.G[:, ::2]})
    fitted, _ = fit_coefficients(pefs, sub, n_iters=1, W_init=np.ones((41, 3)), dtype=torch.float64)
    mat = build_matrix(pefs, "lrm", col_map=keep)
    assert mat.n_cols == keep.size
    P = torch.from_numpy(mat.A.toarray()) @ torch.from_numpy(sub.G.astype(np.float64).T.copy())
    S = torch.from_numpy(sub.G.astype(np.float64) @ sub.G.astype(np.float64).T)
    exp = lrm.w_update(torch.ones(41, 3, dtype=torch.float64), lrm.numerator(P, 41, 2), S, 1e-9)
    np.testing.assert_allclose(fitted.W, exp.numpy(), rtol=1e-5)


@pytest.mark.parametrize("sparse", [False, True])
def test_diag_fit_on_own_pefs_converges_to_its_w(sparse):
    pefs, _, _ = planted_diag_pefs(n=40, m=50, r=3, K=30, seed=2)
    mat = build_matrix(pefs, "diag")
    fac = build_factorization(
        mat, n_components=3, seed=1, hyper=Hyper(mu_eps=1e-10), dtype=torch.float64
    )
    run_schedule(fac, schedule("diag", 0, 3000), log_every=0)
    from npeff.artifacts.decomposition import Decomposition

    H = fac.Ft.T.numpy()
    dec = Decomposition(
        kind="diag",
        W=fac.W.numpy(),
        H=sp.csr_matrix(H) if sparse else H,
        new_to_old_col_indices=mat.new_to_old_col_indices,
        n_parameters=mat.n_parameters,
    )
    fitted, _ = fit_coefficients(pefs, dec, n_iters=3000, mu_eps=1e-10, dtype=torch.float64)
    err = np.linalg.norm(fitted.W - fac.W.numpy()) / np.linalg.norm(fac.W.numpy())
    assert err < 2e-2


def test_mismatched_inputs_are_refused(lrm_run):
    pefs, dec = lrm_run
    other, _ = planted_lrm_pefs(n=5, m=31, C=2, r=3, K=20, seed=0)
    with pytest.raises(ValueError, match="31 parameters but the decomposition has 30"):
        fit_coefficients(other, dec, n_iters=2)
    diag_pefs, _, _ = planted_diag_pefs(n=5, m=30, r=2, K=10, seed=0)
    with pytest.raises(ValueError, match="decomp=d_npeff"):
        fit_coefficients(diag_pefs, dec, n_iters=2)
    three, _ = planted_lrm_pefs(n=5, m=30, C=3, r=3, K=20, seed=0)
    with pytest.raises(ValueError, match="class rows"):
        fit_coefficients(three, dec, n_iters=2)
