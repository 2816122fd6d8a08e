"""Random-projection PEFs (npeff/fisher/projection.py): S against its explicit matrix, the JL
bound on inner products, and planted parameter-space components recovered after projection."""

import numpy as np
import pytest
import torch

from npeff.decomp.module import DecompSettings
from npeff.decomp.runner import decompose
from npeff.decomp.synthetic import lrm_pefs_from_dense
from npeff.fisher.projection import SparseProjection, fit_components, sparse_recover


@pytest.fixture(autouse=True)
def one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def explicit(proj: SparseProjection) -> np.ndarray:
    """S [d, m] built column by column from the definition (independent of apply/adjoint)."""
    b, s = proj.hashes()
    S = np.zeros((proj.d, proj.m))
    for t in range(proj.n_nonzero):
        S[b[t].numpy(), np.arange(proj.m)] += s[t].numpy()
    return S


@pytest.mark.parametrize("kind", ["sparse_jl", "sign_hash"])
def test_apply_and_adjoint_are_the_matrix_and_its_transpose(kind):
    proj = SparseProjection(300, 40, seed=3, kind=kind, s=4)
    S = explicit(proj)
    nz = (S != 0).sum(0)
    assert (nz == proj.n_nonzero).all()  # s non-zeros ±1/√s per parameter (blocks: no collision)
    np.testing.assert_allclose(np.abs(S[S != 0]), proj.n_nonzero**-0.5, rtol=1e-6)
    x = torch.randn(2, 3, 300, dtype=torch.float64)
    np.testing.assert_allclose(proj.apply(x).numpy(), x.numpy() @ S.T, atol=1e-12)
    y = torch.randn(5, 40, dtype=torch.float64)
    np.testing.assert_allclose(proj.adjoint(y).numpy(), y.numpy() @ S, atol=1e-12)
    # seeded: the same seed gives the same map, another seed another one
    np.testing.assert_array_equal(explicit(SparseProjection(300, 40, 3, kind, 4)), S)
    assert not np.array_equal(explicit(SparseProjection(300, 40, 4, kind, 4)), S)


def test_projected_inner_products_are_within_the_jl_bound():
    m, d = 20000, 1024
    proj = SparseProjection(m, d, seed=0, kind="sparse_jl", s=4)
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(60, m, generator=gen, dtype=torch.float64)
    y = 0.5 * x + torch.randn(60, m, generator=gen, dtype=torch.float64)  # correlated pairs
    true = (x * y).sum(1)
    est = (proj.apply(x) * proj.apply(y)).sum(1)
    scale = x.norm(dim=1) * y.norm(dim=1)
    err = ((est - true) / scale).numpy()
    # Var⟨Sx, Sy⟩ ≤ (‖x‖²‖y‖² + ⟨x,y⟩²)/d ≤ 2‖x‖²‖y‖²/d: all 60 within 4σ, RMS within 1.3σ
    sigma = np.sqrt(2.0 / d)
    assert np.abs(err).max() <= 4 * sigma, (np.abs(err).max(), sigma)
    assert np.sqrt((err**2).mean()) <= 1.3 * sigma
    # squared norms (the Frobenius norms of rank-1 PEFs) too
    rel = ((proj.apply(x).square().sum(1) / x.square().sum(1)) - 1).abs()
    assert float(rel.max()) <= 4 * sigma


def best_abs_cos(learned: np.ndarray, planted: np.ndarray) -> np.ndarray:
    a = learned / np.maximum(np.linalg.norm(learned, axis=1, keepdims=True), 1e-30)
    b = planted / np.linalg.norm(planted, axis=1, keepdims=True)
    return np.abs(b @ a.T).max(1)


@pytest.fixture(scope="module")
def planted_projected(tmp_path_factory):
    """Rank-1 sparse components in parameter space (m = 3000, support 20), PEFs of 2 rows each,
    projected to d = 256 and decomposed there (dense A) with LRM-NPEFF unchanged."""
    rng = np.random.default_rng(0)
    n, m, C, r, support, d = 240, 3000, 2, 5, 20, 256
    G = np.zeros((r, m))
    for k in range(r):
        idx = rng.choice(m, size=support, replace=False)
        G[k, idx] = rng.standard_normal(support)
    G /= np.linalg.norm(G, axis=1, keepdims=True)
    A = np.zeros((n, C, m))
    for i in range(n):
        ks = rng.choice(r, size=C, replace=False)
        A[i] = rng.uniform(0.3, 1.0, size=C)[:, None] * G[ks]
        A[i] += 0.01 * rng.standard_normal((C, m)) / np.sqrt(m)
    proj = SparseProjection(m, d, seed=7)
    Ap = proj.apply(torch.as_tensor(A)).numpy()
    pefs_proj = lrm_pefs_from_dense(Ap, C * d)
    pefs_proj.norms = lrm_pefs_from_dense(A, C * m).norms  # the stored norms are the dense ones
    s = DecompSettings(
        kind="lrm",
        n_components=r,
        n_iters_g_only=20,
        n_iters_joint=300,
        lr_g=3e-3,
        seed=1,
        dtype="float64",
    )
    dec = decompose(pefs_proj, s, tmp_path_factory.mktemp("dec"), progress=False)
    Gp = np.zeros((r, d))
    Gp[:, dec.new_to_old_col_indices] = dec.G
    return dict(G=G, A=A, proj=proj, dec=dec, Gp=Gp, support=support, C=C)


def test_planted_components_come_back_by_a_g_only_fit_on_top_k_pefs(planted_projected):
    p = planted_projected
    proj, dec = p["proj"], p["dec"]
    # in projected space the decomposition finds S g_k
    assert best_abs_cos(p["Gp"], proj.apply(torch.as_tensor(p["G"])).numpy()).mean() >= 0.95
    # top-K PEFs of the same examples (K = 150 of 6000 entries), W fixed: G back in R^m
    topk = lrm_pefs_from_dense(p["A"], 150)
    init = proj.adjoint(torch.as_tensor(p["Gp"])).numpy()
    G_fit, cols, rel_loss = fit_components(topk, dec.W, init, n_iters=300)
    full = np.zeros((G_fit.shape[0], p["G"].shape[1]))
    full[:, cols] = G_fit
    cos = best_abs_cos(full, p["G"])
    assert cos.mean() >= 0.9, cos
    # the back-projection Sᵀg̃ alone is far worse (d ≪ m): the fit does the work
    assert best_abs_cos(init, p["G"]).mean() < cos.mean() - 0.1


def test_planted_sparse_components_come_back_by_compressed_sensing(planted_projected):
    p = planted_projected
    rec = sparse_recover(p["proj"], torch.as_tensor(p["Gp"]), sparsity=p["support"], n_iters=60)
    cos = best_abs_cos(rec.numpy(), p["G"])
    assert cos.mean() >= 0.9, cos


def test_d_larger_than_m_is_refused():
    with pytest.raises(ValueError, match="larger than the 100 parameters"):
        SparseProjection(100, 128)


@pytest.mark.parametrize("method", ["fit", "sparse"])
def test_a_projected_decomposition_comes_back_as_a_parameter_space_file(
    planted_projected, method, tmp_path
):
    from npeff.artifacts.decomposition import load_decomposition, save_decomposition
    from npeff.fisher.projection import components_to_parameter_space

    p = planted_projected
    topk = lrm_pefs_from_dense(p["A"], 150)
    back = components_to_parameter_space(
        p["dec"], topk, p["proj"], method=method, sparsity=p["support"]
    )
    dec = load_decomposition(save_decomposition(back, tmp_path / "dec.h5"))
    assert dec.n_parameters == p["G"].shape[1] and dec.metadata["recovery"]["method"] == method
    full = np.zeros((dec.G.shape[0], dec.n_parameters))
    full[:, dec.new_to_old_col_indices] = dec.G
    assert best_abs_cos(full, p["G"]).mean() >= 0.9
    np.testing.assert_array_equal(dec.W, p["dec"].W.astype(np.float32))
