"""npeff-decompose and npeff-fit stages on real composed configs and PEF files (tiny, offline)."""

import json
import os

import numpy as np
import pytest
import scipy.sparse as sp
import torch

from npeff.artifacts.decomposition import load_decomposition
from npeff.artifacts.pefs import save_pefs
from npeff.decomp.synthetic import planted_diag_pefs, planted_lrm_pefs
from npeff.run import decompose as decompose_stage
from npeff.run import fit as fit_stage
from tests.helpers.compose import compose_config

os.environ.setdefault("WANDB_MODE", "disabled")


@pytest.fixture(autouse=True)
def one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def lrm_pefs_file(tmp_path_factory):
    pefs, _ = planted_lrm_pefs(n=40, m=30, C=2, r=3, K=45, noise=0.05, seed=0)
    return save_pefs(pefs, tmp_path_factory.mktemp("pefs") / "pefs.h5")


@pytest.fixture(scope="module")
def diag_pefs_file(tmp_path_factory):
    pefs, _, _ = planted_diag_pefs(n=40, m=30, r=3, K=20, seed=0)
    return save_pefs(pefs, tmp_path_factory.mktemp("dpefs") / "pefs.h5")


SMALL = ["progress=false", "checkpoint_every=5", "convergence_every=5"]


def test_lrm_decompose_then_fit(tmp_path, lrm_pefs_file):
    c = compose_config(
        "decompose",
        [
            f"inputs.pefs={lrm_pefs_file}",
            "decomp=lrm_npeff",
            "decomp.n_components=3",
            "decomp.n_iters_g_only=5",
            "decomp.n_iters_joint=40",
            "decomp.lr_g=3e-3",
            "decomp.seed=1",
            "decomp.log_every=5",
            *SMALL,
        ],
    )
    m = decompose_stage.run(c, tmp_path / "dec")
    dec = load_decomposition(tmp_path / "dec" / "decomposition.h5")
    on_disk = json.loads((tmp_path / "dec" / "metrics.json").read_text())
    assert on_disk["final_loss"] == pytest.approx(float(dec.losses["joint"][-1]), rel=1e-6)
    assert m["n_steps"] == 45 and m["seconds"] > 0 and m["kind"] == "lrm"
    assert dec.G.shape == (3, dec.new_to_old_col_indices.size) and dec.n_classes == 2
    assert dec.metadata["source"]["pefs"] == str(lrm_pefs_file.resolve())
    assert "n_components: 3" in dec.metadata["config"] and dec.metadata["seed"] == 1
    assert dec.convergence["cosine"].shape == (9, 3)
    assert (tmp_path / "dec" / "checkpoints" / "last.ckpt").is_file()

    f = compose_config(
        "fit",
        [
            f"inputs.pefs={lrm_pefs_file}",
            f"inputs.decomposition={tmp_path / 'dec' / 'decomposition.h5'}",
            "fit.n_iters=50",
            "fit.chunk_size=15",
            "progress=false",
        ],
    )
    fm = fit_stage.run(f, tmp_path / "fit")
    coeffs = load_decomposition(tmp_path / "fit" / "coeffs.h5")
    assert coeffs.W.shape == (40, 3) and fm["n_chunks"] == 3
    np.testing.assert_array_equal(coeffs.G, dec.G)
    assert coeffs.metadata["source"]["decomposition"].endswith("decomposition.h5")


def test_d_npeff_sparse_h_then_fit(tmp_path, diag_pefs_file):
    c = compose_config(
        "decompose",
        [
            f"inputs.pefs={diag_pefs_file}",
            "decomp=d_npeff",
            "decomp.n_components=3",
            "decomp.n_iters_joint=60",
            "decomp.h_threshold=0.05",
            *SMALL,
        ],
    )
    m = decompose_stage.run(c, tmp_path / "dec")
    dec = load_decomposition(tmp_path / "dec" / "decomposition.h5")
    assert dec.kind == "diag" and sp.issparse(dec.H)
    assert 0 < m["H_density"] <= 1
    np.testing.assert_allclose(
        sp.linalg.norm(dec.H, axis=1), 1.0, atol=0.2
    )  # unit before thresholding
    f = compose_config(
        "fit",
        [
            f"inputs.pefs={diag_pefs_file}",
            f"inputs.decomposition={tmp_path / 'dec' / 'decomposition.h5'}",
            "fit.n_iters=100",
            "progress=false",
        ],
    )
    fit_stage.run(f, tmp_path / "fit")
    coeffs = load_decomposition(tmp_path / "fit" / "coeffs.h5")
    assert coeffs.W.shape == (40, 3) and sp.issparse(coeffs.H)
    assert (coeffs.H != dec.H).nnz == 0


def test_bad_inputs_fail_before_any_output(tmp_path, lrm_pefs_file, diag_pefs_file):
    with pytest.raises(ValueError, match="decomp=lrm_npeff"):
        decompose_stage.run(
            compose_config("decompose", [f"inputs.pefs={lrm_pefs_file}", "decomp=d_npeff", *SMALL]),
            tmp_path / "a",
        )
    with pytest.raises(ValueError, match="larger than the number of examples"):
        decompose_stage.run(
            compose_config(
                "decompose", [f"inputs.pefs={lrm_pefs_file}", "decomp.n_components=41", *SMALL]
            ),
            tmp_path / "b",
        )
    for d in ("a", "b"):
        assert not (tmp_path / d / "decomposition.h5").exists()
        assert not (tmp_path / d / "metrics.json").exists()
    with pytest.raises(FileNotFoundError):
        decompose_stage.run(
            compose_config("decompose", [f"inputs.pefs={tmp_path / 'nope.h5'}"]), tmp_path / "c"
        )
