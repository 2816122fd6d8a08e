"""`npeff experiment=tracr_nli` end to end on a small config (the packaged export; no jax)."""

from __future__ import annotations

import json

import pytest

from tests.helpers.compose import run_pipeline

SMALL = [
    "experiment=tracr_nli",
    "logger=none",
    "progress=false",
    "task.n_fit=160",
    "task.n_eval=160",
    "fisher.n_values=500",
    "decomp.n_components=4",
    "decomp.n_iters_g_only=5",
    "decomp.n_iters_joint=30",
    "perturb.n_top=16",
    "+stages.fit.n_iters=50",
    "stages.report.concept_top_k=16",
    "+stages.report.n_shuffles=5",
    "steps.tracr_check.n_shuffles=5",
    "steps.tracr_check.extra_n_components=[6]",
    "trainer.enable_model_summary=false",
]


@pytest.mark.slow
def test_tracr_pipeline(tmp_path):
    m = run_pipeline(SMALL + [f"paths.output_dir={tmp_path / 'out'}"], tmp_path / "run")
    assert m["model_accuracy"] == 1.0  # the compiled model reproduces RASP's labels
    assert m["concept_top_k"] == 16
    assert m["concept_components"] is not None and m["concept_components_shuffled"] is not None
    assert m["tracr_port_max_abs_err"] <= 1e-5 and m["tracr_rasp_agreement"] == 1.0
    if m["tracr_layer_n_components_checked"]:
        assert 0.0 <= m["tracr_layer_unit_share_mean"] <= 1.0
    check = json.loads((tmp_path / "run" / "tracr_check" / "tracr_check.json").read_text())
    assert check["concept_top_k"] == 16 and len(check["concept_table"]) >= 19
    # the second decomposition of the same fit PEFs (the paper's 32 and 128, shrunk to 4 and 6)
    by_n = m["tracr_by_n_components"]
    assert sorted(by_n) == ["4", "6"] and by_n["6"]["n_components"] == 6
    assert by_n["4"]["concept_components"] == m["concept_components"]  # the report's, same k
    assert 0 <= by_n["6"]["concept_components"] <= 6 and by_n["6"]["concept_top_k"] == 16
    assert (tmp_path / "run" / "decompose_6" / "decomposition.h5").is_file()
    html = (tmp_path / "run" / "report" / "report.html").read_text()
    assert "tracr ground truth" in html and "layer check" in html and "negation_present" in html
    assert "concept statistic by number of components" in html
