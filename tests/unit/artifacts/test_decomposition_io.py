"""Decomposition files: round trips (LRM, D dense, D sparse), reference names, clear refusals."""

import h5py
import numpy as np
import pytest
import scipy.sparse as sp

from npeff.artifacts import keys
from npeff.artifacts.decomposition import (
    Decomposition,
    DecompositionFileError,
    load_decomposition,
    save_decomposition,
)
from npeff.artifacts.layout import ParameterLayout


def lrm_dec():
    rng = np.random.default_rng(0)
    return Decomposition(
        kind="lrm",
        W=rng.random((5, 3)).astype(np.float32),
        G=rng.standard_normal((3, 4)).astype(np.float32),
        new_to_old_col_indices=np.array([0, 2, 5, 9]),
        n_parameters=10,
        n_classes=3,
        losses={"G_only": np.array([3.0, 2.0]), "joint": np.array([1.0, 0.5, 0.4])},
        log_loss_frequency=5,
        convergence={"steps": np.array([0, 10]), "cosine": np.ones((2, 3), np.float32)},
        layout=ParameterLayout(("a", "b"), ((2, 3), (4,)), (0, 6), 10),
        metadata={"source": {"pefs": "/x/pefs.h5"}, "config": "decomp:\n  seed: 1\n", "seed": 1},
    )


def test_lrm_round_trip_with_reference_names(tmp_path):
    dec = lrm_dec()
    path = save_decomposition(dec, tmp_path / "d.h5")
    with h5py.File(path) as f:
        for key in (
            keys.W,
            keys.G,
            keys.NEW_TO_OLD_COL_INDICES,
            keys.LOSSES_G_ONLY,
            keys.LOSSES_JOINT,
        ):
            assert key in f
        assert f[keys.NEW_TO_OLD_COL_INDICES].dtype == np.int32
        assert int(f[keys.DATA_GROUP].attrs[keys.ATTR_N_PARAMETERS]) == 10
        assert int(f[keys.DATA_GROUP].attrs[keys.ATTR_N_CLASSES]) == 3
    back = load_decomposition(path)
    np.testing.assert_array_equal(back.W, dec.W)
    np.testing.assert_array_equal(back.G, dec.G)
    np.testing.assert_array_equal(back.new_to_old_col_indices, dec.new_to_old_col_indices)
    np.testing.assert_allclose(back.losses["joint"], dec.losses["joint"])
    np.testing.assert_array_equal(back.convergence["cosine"], dec.convergence["cosine"])
    assert back.log_loss_frequency == 5 and back.n_classes == 3 and back.kind == "lrm"
    assert back.layout == dec.layout
    assert back.metadata["seed"] == 1 and back.metadata["source"]["pefs"] == "/x/pefs.h5"
    assert "seed: 1" in back.metadata["config"]


@pytest.mark.parametrize("sparse", [False, True])
def test_diag_round_trip(tmp_path, sparse):
    rng = np.random.default_rng(1)
    H = rng.random((3, 6)).astype(np.float32)
    H[H < 0.5] = 0
    dec = Decomposition(
        kind="diag",
        W=rng.random((4, 3)).astype(np.float32),
        H=sp.csr_matrix(H) if sparse else H,
        new_to_old_col_indices=np.arange(6) * 2,
        n_parameters=12,
    )
    path = save_decomposition(dec, tmp_path / "d.h5")
    with h5py.File(path) as f:
        assert keys.REDUCE_KEPT_INDICES in f
        assert np.asarray(f[keys.REDUCE_KEPT_INDICES].attrs[keys.ATTR_FULL_DENSE_SIZE]).shape == (
            1,
        )
        assert isinstance(f[keys.H], h5py.Group) == sparse
        if sparse:
            assert f[keys.H_ROW_INDICES].dtype == np.int64
            assert f[keys.H_COLUMN_INDICES].dtype == np.int32
    back = load_decomposition(path)
    assert back.kind == "diag" and back.n_parameters == 12
    assert sp.issparse(back.H) == sparse
    got = back.H.toarray() if sparse else back.H
    np.testing.assert_array_equal(got, H)


def test_reference_file_without_npeff_metadata_loads(tmp_path):
    path = tmp_path / "ref.h5"
    with h5py.File(path, "w") as f:
        f.create_dataset(keys.W, data=np.ones((2, 2), np.float32))
        f.create_dataset(keys.G, data=np.ones((2, 3), np.float32))
        f.create_dataset(keys.NEW_TO_OLD_COL_INDICES, data=np.array([0, 1, 4], np.int32))
        f[keys.DATA_GROUP].attrs[keys.ATTR_N_PARAMETERS] = 5
        f[keys.DATA_GROUP].attrs[keys.ATTR_N_CLASSES] = 3
    dec = load_decomposition(path)
    assert dec.kind == "lrm" and dec.G.shape == (2, 3)


def test_refuses_pef_file_foreign_and_truncated(tmp_path):
    pef = tmp_path / "pefs.h5"
    with h5py.File(pef, "w") as f:
        f.create_dataset(keys.VALUES, data=np.ones((2, 3), np.float32))
    with pytest.raises(DecompositionFileError, match="PEF file"):
        load_decomposition(pef)
    other = tmp_path / "other.h5"
    with h5py.File(other, "w") as f:
        f.create_group(keys.NPEFF_GROUP).attrs[keys.ATTR_ARTIFACT] = "perturbation"
    with pytest.raises(DecompositionFileError, match="not a decomposition"):
        load_decomposition(other)
    path = save_decomposition(lrm_dec(), tmp_path / "d.h5")
    with h5py.File(path, "a") as f:
        f[keys.NPEFF_GROUP].attrs[keys.ATTR_COMPLETE] = False
    with pytest.raises(DecompositionFileError, match="incomplete"):
        load_decomposition(path)
    junk = tmp_path / "junk.h5"
    junk.write_bytes(b"not hdf5")
    with pytest.raises(DecompositionFileError, match="not a readable HDF5"):
        load_decomposition(junk)
    with pytest.raises(FileNotFoundError):
        load_decomposition(tmp_path / "missing.h5")


def test_inconsistent_shapes_are_refused(tmp_path):
    dec = lrm_dec()
    dec.G = dec.G[:, :3]
    with pytest.raises(ValueError, match="G has shape"):
        save_decomposition(dec, tmp_path / "d.h5")
    assert not (tmp_path / "d.h5").exists()
