"""`npeff experiment=digits_lvrm` (fisher=lvrm, 10 classes, a class threshold) end to end on a
shrunk config: variable-rank PEFs with rank-0 examples → LRM-NPEFF decomposition with per-example
row counts → coefficients on eval → LRM perturbations → report."""

from __future__ import annotations

import json

import h5py
import numpy as np
import pytest

from npeff.artifacts.decomposition import load_decomposition
from npeff.artifacts.pefs import load_pefs
from tests.helpers.compose import run_pipeline

SHRUNK = [
    "experiment=digits_lvrm",
    "logger=none",
    "progress=false",
    "task.n_fit=80",
    "task.n_eval=80",
    "model.channels=[4,8]",
    "model.hidden=16",
    "trainer.max_epochs=1",
    "trainer.enable_model_summary=false",
    # an undertrained model is unsure: a high threshold leaves some examples with rank 0
    "fisher.min_prob_class=0.25",
    "fisher.max_classes=3",
    "fisher.n_values=300",
    "decomp.n_components=4",
    "decomp.n_iters_g_only=5",
    "decomp.n_iters_joint=40",
    "perturb.n_top=8",
    "+stages.fit.n_iters=50",
    "+stages.report.n_shuffles=2",
]


@pytest.mark.slow
def test_digits_lvrm_pipeline(tmp_path):
    out = tmp_path / "run"
    metrics = run_pipeline(SHRUNK + [f"paths.output_dir={tmp_path / 'outputs'}"], out)
    on_disk = json.loads((out / "metrics.json").read_text())
    assert on_disk["n_components"] == 4 and on_disk["kl_ratio_median"] > 0
    assert metrics["final_loss"] is not None
    fit_pefs = load_pefs(out / "pefs_fit" / "pefs.h5")
    assert fit_pefs.kind == "lvrm" and fit_pefs.min_prob_class == 0.25
    assert fit_pefs.logits.shape[1] == 10
    ranks = np.bincount(fit_pefs.ranks, minlength=4)
    assert ranks[0] > 0 and ranks[1:].sum() > 0, ranks
    dec = load_decomposition(out / "decompose" / "decomposition.h5")
    assert dec.n_classes == -1 and dec.W.shape == (80, 4)
    assert np.all(dec.W[fit_pefs.ranks == 0] == 0), "rank-0 examples contribute nothing"
    with h5py.File(out / "decompose" / "decomposition.h5", "r") as f:
        assert int(f["data"].attrs["n_classes"]) == -1
    coeffs = load_decomposition(out / "fit" / "coeffs.h5")
    assert coeffs.W.shape == (80, 4) and coeffs.n_classes == -1
    assert (out / "report" / "report.html").is_file()
    pert = json.loads((out / "perturb" / "perturbation.json").read_text())
    assert pert["kind"] == "lrm" and pert["sign_policy"] == "best"
    assert len(pert["components"]) + len(pert["skipped_components"]) == 4
