"""The `npeff` pipeline end to end on a tiny config, its training cache, and its configs."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest
from omegaconf import OmegaConf

from npeff.run import pipeline
from npeff.run.common import CONFIG_PATH
from npeff.run.configs import stage_config
from npeff.run.train_cache import train_cache_key
from tests.helpers.compose import compose_config, run_pipeline
from tests.helpers.problems import TINY_PIPELINE

HEADLINE = (
    "model_accuracy",
    "n_components",
    "final_loss",
    "kl_ratio_median",
    "pef_norm_ratio_median",
    "frac_kl_ratio_above_norm_ratio",
    "concept_components",
    "concept_components_shuffled",
    "seconds",
)


def test_pipeline_end_to_end_and_cache(tmp_path):
    overrides = TINY_PIPELINE + [f"paths.output_dir={tmp_path / 'outputs'}"]
    t0 = time.perf_counter()
    metrics = run_pipeline(overrides, tmp_path / "run1")
    elapsed = time.perf_counter() - t0
    assert elapsed < 120, f"tiny pipeline took {elapsed:.0f} s"

    on_disk = json.loads((tmp_path / "run1" / "metrics.json").read_text())
    assert on_disk == json.loads(json.dumps(metrics))
    for key in HEADLINE:
        assert on_disk[key] is not None, key
    assert on_disk["n_components"] == 4
    assert 0.0 <= on_disk["model_accuracy"] <= 1.0
    assert on_disk["kl_ratio_median"] > 0
    for step in ("train", "pefs_fit", "decompose", "pefs_eval", "fit", "perturb", "report"):
        assert step in on_disk["seconds"]
    run1 = tmp_path / "run1"
    for f in (
        "train/model.ckpt",
        "pefs_fit/pefs.h5",
        "decompose/decomposition.h5",
        "pefs_eval/pefs.h5",
        "fit/coeffs.h5",
        "perturb/perturbation.h5",
        "perturb/perturbation.json",
        "report/report.html",
    ):
        assert (run1 / f).is_file(), f
    assert not on_disk["train_cached"]
    # No baselines by default: no baseline step, no comparison, no `methods` key.
    assert not list(run1.glob("baseline*")) and not (run1 / "comparison").exists()
    assert "methods" not in on_disk

    # Coefficients on eval are for the eval examples, G is the decomposition's.
    from npeff.artifacts.decomposition import load_decomposition
    from npeff.artifacts.pefs import load_pefs

    dec = load_decomposition(run1 / "decompose" / "decomposition.h5")
    coeffs = load_decomposition(run1 / "fit" / "coeffs.h5")
    assert dec.W.shape[0] == load_pefs(run1 / "pefs_fit" / "pefs.h5").n_examples == 96
    assert coeffs.W.shape == (96, 4)

    # The same training config reuses the cached model; a different one trains again.
    again = run_pipeline(overrides, tmp_path / "run2")
    assert again["train_cached"]
    assert again["model_accuracy"] == metrics["model_accuracy"]
    key_a = train_cache_key(stage_config(compose_config("pipeline", overrides), "train"))
    key_b = train_cache_key(
        stage_config(compose_config("pipeline", overrides + ["seed=1"]), "train")
    )
    assert key_a != key_b


def test_stage_configs_take_the_pipeline_groups():
    cfg = compose_config(
        "pipeline", ["decomp.n_components=7", "fisher.n_values=123", "task.n_fit=50"]
    )
    dec = stage_config(cfg, "decompose", inputs={"pefs": "x.h5"})
    assert dec.decomp.n_components == 7 and dec.inputs.pefs == "x.h5"
    pefs = stage_config(cfg, "pefs", "pefs_fit", split="fit")
    assert pefs.fisher.n_values == 123 and pefs.split == "fit"
    train = stage_config(cfg, "train")
    assert train.task.n_fit == 50
    assert train.optim.lr == cfg.optim.lr  # the task's training recipe reaches the train stage


def test_mismatched_fisher_and_decomp_fail_before_work(tmp_path):
    cfg = compose_config("pipeline", ["fisher=diag", "decomp=lrm_npeff", "logger=none"])
    with pytest.raises(ValueError, match="fisher=diag"):
        pipeline.run(cfg, tmp_path)
    assert not (tmp_path / "train").exists()


EXPERIMENTS = sorted(p.stem for p in (Path(CONFIG_PATH) / "experiment").glob("*.yaml"))


@pytest.mark.parametrize("experiment", EXPERIMENTS)
def test_every_experiment_composes(experiment):
    cfg = compose_config("pipeline", [f"experiment={experiment}"], hydra_cfg=True)
    OmegaConf.resolve(cfg)
    assert (cfg.decomp.kind == "diag") == (cfg.fisher.kind == "diag")
    for stage in ("train", "pefs", "decompose", "fit", "perturb", "report"):
        stage_config(cfg, stage)
    if experiment.endswith("_ablation"):
        assert cfg.hydra.mode.name == "MULTIRUN"
        assert cfg.hydra.sweeper.params
        assert "compare" in cfg.hydra.callbacks


def test_experiment_names_cover_the_documented_recipes():
    expected = {
        "toy_nli",
        "group_s4",
        "digits_d",
        "digits_lvrm",
        "tweets_minilm",
        "flawed_heuristics",
        "sparsity_ablation",
        "components_ablation",
    }
    assert expected <= set(EXPERIMENTS)


def test_train_config_of_another_task_has_only_that_tasks_options():
    cfg = compose_config("pipeline", ["experiment=group_s4"])
    train = stage_config(cfg, "train")
    assert train.task == cfg.task and train.model == cfg.model
    assert (
        train.optim.name == "adam" and train.batch_size is None
    )  # the group recipe, not toy_nli's
    from npeff.tasks import build_task

    build_task(train.task)  # no options left over from the default task
