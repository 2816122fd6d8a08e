"""`npeff baselines=[kmeans,gradient_kmeans,sae]` on the tiny toy NLI pipeline: every baseline in
its own step dir, the comparison table for all four methods in metrics.json and the report."""

from __future__ import annotations

import json

import pytest

from tests.helpers.compose import compose_config, run_pipeline
from tests.helpers.problems import TINY_PIPELINE

METHODS = ("npeff", "kmeans", "gradient_kmeans", "sae")
EVERY = ("concept_components", "concept_components_shuffled", "tcav_significant_share")
BASELINE_ONLY = ("avg_max_cos_vs_npeff", "avg_max_cos_npeff_vs")


@pytest.mark.slow
def test_pipeline_with_baselines_compares_all_methods(tmp_path):
    overrides = TINY_PIPELINE + [
        f"paths.output_dir={tmp_path / 'outputs'}",
        "baselines=[kmeans,gradient_kmeans,sae]",
        "+stages.baseline.sae.epochs=10",
        "+stages.baseline.compare.tcav_random=8",
        "+stages.baseline.report.enabled=false",
        "+stages.baseline_sae.sae.kind=l1",
    ]
    metrics = run_pipeline(overrides, tmp_path / "run")
    run = tmp_path / "run"
    on_disk = json.loads((run / "metrics.json").read_text())
    methods = on_disk["methods"]
    assert sorted(methods) == sorted(METHODS)
    for m in METHODS:
        for key in EVERY:
            assert methods[m][key] is not None, (m, key)
        assert 0.0 <= methods[m]["tcav_significant_share"] <= 1.0
        assert methods[m]["n_components"] == 4
    for m in METHODS[1:]:
        for key in BASELINE_ONLY:
            assert 0.0 <= methods[m][key] <= 1.0 + 1e-9, (m, key)
        assert "no parameter-space direction" in methods[m]["selectivity"]
        assert (run / f"baseline_{m}" / "baseline.h5").is_file()
    assert methods["npeff"]["selectivity_kl_ratio_median"] == metrics["kl_ratio_median"]
    assert (run / "baseline_activations" / "activations_eval.h5").is_file()
    assert json.loads((run / "baseline_sae" / "metrics.json").read_text())["sae_kind"] == "l1"
    html = (run / "report" / "report.html").read_text()
    assert "Comparison with baselines" in html
    for m in METHODS:
        assert f"<b>{m}</b>" in html
    for step in ("baseline_kmeans", "baseline_gradient_kmeans", "baseline_sae", "comparison"):
        assert step in on_disk["seconds"]


def test_unknown_baseline_fails_before_training(tmp_path):
    from npeff.run import pipeline

    cfg = compose_config("pipeline", ["baselines=[kmeans,pca]", "logger=none"])
    with pytest.raises(ValueError, match="unknown baselines \\['pca'\\]"):
        pipeline.run(cfg, tmp_path)
    assert not (tmp_path / "train").exists()
