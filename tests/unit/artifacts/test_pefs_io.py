"""PEF file IO: round trips, reference-only files, refusal of foreign/incomplete/truncated
files, subsets, the dataset Fisher file, and kill/resume of the streaming writer."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch

from npeff.artifacts import keys
from npeff.artifacts.pefs import (
    PefsFileError,
    load_dataset_fisher,
    load_pefs,
    save_dataset_fisher,
    save_pefs,
    subset_pefs,
)
from npeff.fisher import compute_pefs
from tests.helpers.problems import problem
from tests.helpers.references import assert_same_pefs
from tests.helpers.scripts import script_env


def make(tmp_path, kind, name="mlp", n=7, **kw):
    model, ds = problem(name, n=n)
    loader = torch.utils.data.DataLoader(ds, batch_size=2)
    sel = {"lvrm": {"min_prob_class": 0.2, "max_classes": 3}}.get(kind, {})
    path = compute_pefs(
        model, loader, tmp_path / f"{kind}.h5", kind=kind, n_values=9, progress=False, **sel, **kw
    )
    return model, loader, path


@pytest.mark.parametrize("kind", ["lrm", "lvrm", "diag"])
def test_round_trip(tmp_path, kind):
    _, _, path = make(tmp_path, kind)
    pefs = load_pefs(path)
    assert pefs.metadata["schema_version"] == keys.SCHEMA_VERSION
    save_pefs(pefs, tmp_path / "copy.h5")
    assert_same_pefs(pefs, load_pefs(tmp_path / "copy.h5"))


def test_reference_names_and_dtypes(tmp_path):
    _, _, p_lrm = make(tmp_path, "lrm")
    _, _, p_d = make(tmp_path, "diag")
    _, _, p_lv = make(tmp_path, "lvrm")
    with h5py.File(p_lrm) as f:
        assert f["data"].attrs["n_classes"] == 4 and f["data"].attrs["n_parameters"] == 74
        assert f["data/col_offsets"].dtype == np.int32 and f["data/row_indices"].dtype == np.int32
        assert f["data/values"].dtype == np.float32 and f["data/labels"].dtype == np.int32
        assert f["data/pef_frobenius_norms"].shape == (7,) and f["data/logits"].shape == (7, 4)
        assert f["npeff"].attrs["complete"] and f["npeff"].attrs["artifact"] == "pefs"
        assert f["npeff"].attrs["kind"] == "lrm"
    with h5py.File(p_d) as f:
        assert f["data/fisher"].attrs["dense_fisher_size"].dtype == np.int32
        assert f["data/fisher/indices"].dtype == np.int32
        assert {"predicted_logits", "dense_fisher_norms"} <= set(f["data"].keys())
    with h5py.File(p_lv) as f:
        assert "n_classes" not in f["data"].attrs
        assert f["data"].attrs["min_prob_class"] == pytest.approx(0.2)
        assert f["data/col_sizes"].shape == (int(f["data/ranks"][...].sum()),)


def strip_to_reference(src: Path, dst: Path):
    """Copy only the reference's datasets and attributes (no npeff group)."""
    with h5py.File(src) as f, h5py.File(dst, "w") as g:
        f.copy("data", g)
    return dst


@pytest.mark.parametrize("kind", ["lrm", "lvrm", "diag"])
def test_reference_only_file_loads(tmp_path, kind):
    _, _, path = make(tmp_path, kind)
    ref = load_pefs(strip_to_reference(path, tmp_path / "ref.h5"))
    full = load_pefs(path)
    assert ref.layout is None
    ref.layout = full.layout
    assert_same_pefs(full, ref)


def test_incomplete_foreign_truncated_refused(tmp_path):
    _, _, path = make(tmp_path, "lrm")
    bad = tmp_path / "bad.h5"
    # incomplete
    bad.write_bytes(path.read_bytes())
    with h5py.File(bad, "a") as f:
        f["npeff"].attrs["complete"] = False
    with pytest.raises(PefsFileError, match="incomplete.*resume"):
        load_pefs(bad)
    # foreign artifact
    with h5py.File(bad, "a") as f:
        f["npeff"].attrs["complete"] = True
        f["npeff"].attrs["artifact"] = "decomposition"
    with pytest.raises(PefsFileError, match="decomposition"):
        load_pefs(bad)
    # truncated dataset
    with h5py.File(bad, "a") as f:
        f["npeff"].attrs["artifact"] = "pefs"
        f["data/pef_frobenius_norms"].resize(3, axis=0)
    with pytest.raises(PefsFileError, match="truncated"):
        load_pefs(bad)
    # not a PEF file / not HDF5 / missing
    with h5py.File(tmp_path / "other.h5", "w") as f:
        f["data/W"] = np.zeros((2, 2))
    with pytest.raises(PefsFileError, match="not a PEF file"):
        load_pefs(tmp_path / "other.h5")
    (tmp_path / "junk.h5").write_text("hello")
    with pytest.raises(PefsFileError, match="not a readable HDF5"):
        load_pefs(tmp_path / "junk.h5")
    with pytest.raises(PefsFileError, match="no PEF file"):
        load_pefs(tmp_path / "missing.h5")


@pytest.mark.parametrize("kind", ["lrm", "lvrm", "diag"])
def test_subset_keeps_every_field(tmp_path, kind):
    _, _, path = make(tmp_path, kind)
    full = load_pefs(path)
    idx = np.array([5, 0, 3])
    sub = subset_pefs(full, idx)
    save_pefs(sub, tmp_path / "sub.h5")
    sub = load_pefs(tmp_path / "sub.h5")
    np.testing.assert_array_equal(full.source_indices, np.arange(7))
    np.testing.assert_array_equal(sub.source_indices, idx)
    for j, i in enumerate(idx):
        np.testing.assert_array_equal(sub.values[j], full.values[i])
        np.testing.assert_array_equal(sub.indices[j], full.indices[i])
        assert sub.labels[j] == full.labels[i] and sub.norms[j] == full.norms[i]
        np.testing.assert_array_equal(sub.logits[j], full.logits[i])
        if kind == "lrm":
            np.testing.assert_array_equal(sub.col_offsets[j], full.col_offsets[i])
        if kind == "lvrm":
            s_full = np.concatenate([[0], np.cumsum(full.ranks)])
            s_sub = np.concatenate([[0], np.cumsum(sub.ranks)])
            np.testing.assert_array_equal(
                sub.col_sizes[s_sub[j] : s_sub[j + 1]], full.col_sizes[s_full[i] : s_full[i + 1]]
            )
    assert sub.layout == full.layout


def test_dataset_fisher_round_trip_and_reference_file(tmp_path):
    f = np.random.default_rng(0).random(13).astype(np.float32)
    save_dataset_fisher(f, tmp_path / "dsf.h5", metadata={"mode": "expectation"})
    np.testing.assert_array_equal(load_dataset_fisher(tmp_path / "dsf.h5"), f)
    with h5py.File(tmp_path / "ref.h5", "w") as g:
        g["data/fisher"] = f
    np.testing.assert_array_equal(load_dataset_fisher(tmp_path / "ref.h5"), f)
    _, _, path = make(tmp_path, "lrm")
    with pytest.raises(PefsFileError):
        load_dataset_fisher(path)


class Stop(RuntimeError):
    pass


@pytest.mark.parametrize("kind", ["lrm", "lvrm", "diag"])
def test_interrupted_run_resumes_to_same_file(tmp_path, kind):
    _, _, full_path = make(tmp_path / "full", kind, dataset_fisher="expectation")
    model, ds = problem("mlp", n=7)
    loader = torch.utils.data.DataLoader(ds, batch_size=2)
    sel = {"lvrm": {"min_prob_class": 0.2, "max_classes": 3}}.get(kind, {})
    out = tmp_path / "run" / f"{kind}.h5"
    kw = dict(kind=kind, n_values=9, progress=False, dataset_fisher="expectation", **sel)

    def stop_after_two(n):
        if n >= 4:
            raise Stop

    with pytest.raises(Stop):
        compute_pefs(model, loader, out, on_chunk=stop_after_two, **kw)
    with pytest.raises(PefsFileError, match="incomplete"):
        load_pefs(out)
    seen = []
    compute_pefs(model, loader, out, on_chunk=seen.append, **kw)
    assert seen == [6, 7], "the rerun resumes after the 4 committed examples"
    assert_same_pefs(load_pefs(full_path), load_pefs(out))
    np.testing.assert_allclose(
        load_dataset_fisher(out.parent / "dsf.h5"),
        load_dataset_fisher(full_path.parent / "dsf.h5"),
        rtol=1e-6,
    )
    # a third run over a complete file does nothing
    compute_pefs(model, loader, out, on_chunk=seen.append, **kw)
    assert seen == [6, 7]


def test_resume_with_other_options_is_refused(tmp_path):
    model, ds = problem("mlp", n=4)
    loader = torch.utils.data.DataLoader(ds, batch_size=2)
    compute_pefs(model, loader, tmp_path / "p.h5", n_values=5, progress=False)
    with pytest.raises(PefsFileError, match="other options"):
        compute_pefs(model, loader, tmp_path / "p.h5", n_values=6, progress=False)


KILL_SCRIPT = textwrap.dedent(
    """
    import os, signal, sys
    import torch
    from tests.helpers.problems import problem
    from npeff.fisher import compute_pefs
    model, ds = problem("mlp", n=9)
    loader = torch.utils.data.DataLoader(ds, batch_size=2)
    kill_at = int(sys.argv[2])
    def on_chunk(n):
        if n >= kill_at:
            os.kill(os.getpid(), signal.SIGKILL)
    compute_pefs(model, loader, sys.argv[1], kind="lrm", n_values=20, progress=False,
                 on_chunk=on_chunk)
    """
)


@pytest.mark.slow
def test_killed_process_resumes(tmp_path):
    """SIGKILL (no cleanup at all) after 3 committed chunks, then the same command again."""
    script = tmp_path / "run.py"
    script.write_text(KILL_SCRIPT)
    env = script_env(WANDB_MODE="disabled", HF_HUB_OFFLINE="1")
    killed = subprocess.run([sys.executable, str(script), str(tmp_path / "a.h5"), "6"], env=env)
    assert killed.returncode == -9
    with h5py.File(tmp_path / "a.h5") as f:
        assert f["npeff"].attrs["n_written"] == 6
    ok = subprocess.run([sys.executable, str(script), str(tmp_path / "a.h5"), "99"], env=env)
    assert ok.returncode == 0
    model, ds = problem("mlp", n=9)
    loader = torch.utils.data.DataLoader(ds, batch_size=2)
    compute_pefs(model, loader, tmp_path / "b.h5", kind="lrm", n_values=20, progress=False)
    assert_same_pefs(load_pefs(tmp_path / "a.h5"), load_pefs(tmp_path / "b.h5"))
