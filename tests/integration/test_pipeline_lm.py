"""`npeff experiment=tiny_lm` and `experiment=toy_nli_zero_shot` end to end on shrunk configs:
a tiny GPT-2 from a config → next-token PEFs (fisher.classes top_p / label_words) → LRM-NPEFF →
coefficients → perturbations → report; and bad label words refused before any work."""

from __future__ import annotations

import json

import numpy as np
import pytest

from npeff.artifacts.pefs import load_pefs
from tests.helpers.compose import compose_config, run_pipeline

COMMON = [
    "logger=none",
    "progress=false",
    "task.n_train=256",
    "task.n_fit=48",
    "task.n_eval=48",
    "model.hidden_size=16",
    "model.num_layers=1",
    "trainer.max_epochs=1",
    "trainer.enable_model_summary=false",
    "fisher.n_values=300",
    "decomp.n_components=4",
    "decomp.n_iters_g_only=5",
    "decomp.n_iters_joint=30",
    "perturb.n_top=8",
    "+stages.fit.n_iters=30",
    "+stages.report.n_shuffles=2",
]


@pytest.mark.slow
def test_tiny_lm_pipeline_with_top_p_classes(tmp_path):
    out = tmp_path / "run"
    over = ["experiment=tiny_lm", "fisher.k=3", *COMMON]
    metrics = run_pipeline(over + [f"paths.output_dir={tmp_path / 'outputs'}"], out)
    assert metrics["n_components"] == 4 and metrics["kl_ratio_median"] > 0
    pefs = load_pefs(out / "pefs_fit" / "pefs.h5")
    assert pefs.kind == "lvrm" and pefs.metadata["fisher_classes"] == {
        "mode": "top_p",
        "q": 0.9,
        "k": 3,
    }
    assert pefs.logits.shape[1] == 26 and 1 <= pefs.ranks.min() and pefs.ranks.max() <= 3
    assert pefs.metadata["fisher_engine"]["func"] == []  # GPT-2 wholly on the fast path
    assert (out / "report" / "report.html").is_file()
    assert "concept_components" in json.loads((out / "metrics.json").read_text())


@pytest.mark.slow
def test_tiny_lm_pipeline_on_projected_pefs(tmp_path):
    """fisher.compression=projection end to end: projected fit PEFs → decomposition → top-K fit
    PEFs → components back in parameter space → coefficients on top-K eval PEFs → perturbations."""
    from npeff.artifacts.decomposition import load_decomposition

    out = tmp_path / "run"
    over = [
        "experiment=tiny_lm",
        "fisher.classes=sample",
        "fisher.n_samples=4",
        "fisher.compression=projection",
        "fisher.projection.d=256",
        "steps.recover.n_iters=40",
        *COMMON,
    ]
    metrics = run_pipeline(over + [f"paths.output_dir={tmp_path / 'outputs'}"], out)
    projected = load_pefs(out / "pefs_fit" / "pefs.h5")
    topk = load_pefs(out / "pefs_fit_topk" / "pefs.h5")
    assert projected.n_parameters == 256 and projected.metadata["compression"]["d"] == 256
    assert topk.n_parameters == projected.metadata["compression"]["m"] > 256
    assert load_pefs(out / "pefs_eval" / "pefs.h5").n_parameters == topk.n_parameters
    back = load_decomposition(out / "recover" / "decomposition.h5")
    projected_dec = load_decomposition(out / "decompose" / "decomposition.h5")
    assert back.n_parameters == topk.n_parameters and back.metadata["recovery"]["method"] == "fit"
    np.testing.assert_array_equal(back.W, projected_dec.W.astype(np.float32))
    assert np.isfinite(back.G).all() and np.abs(back.G).max() > 0
    assert metrics["n_components"] == 4 and np.isfinite(metrics["kl_ratio_median"])
    assert (out / "report" / "report.html").is_file()


def test_npeff_pefs_with_label_words_on_a_zero_shot_checkpoint(tmp_path):
    """The pefs stage (fisher=lm, classes=label_words with text label words) on an untrained
    tiny GPT-2 checkpoint of toy_nli_zero_shot; the pipeline run is the same stages as above."""
    import torch

    from npeff.models import build_model, save_checkpoint
    from npeff.run.pefs import run
    from npeff.tasks import build_task

    task_cfg = {"name": "toy_nli_zero_shot", "n_train": 8, "n_fit": 12, "n_eval": 6}
    model_cfg = {"name": "tiny_gpt2", "hidden_size": 16, "num_layers": 1}
    task = build_task(task_cfg)
    torch.manual_seed(0)
    model = build_model(model_cfg, task.model_hints())
    ckpt = tmp_path / "model.ckpt"
    save_checkpoint(ckpt, model, {"model": model_cfg, "task": task_cfg})
    cfg = compose_config(
        "pefs",
        [
            f"inputs.checkpoint={ckpt}",
            "progress=false",
            "batch_size=4",
            "split=fit",
            "fisher=lm",
            "fisher.classes=label_words",
            "fisher.label_words=[yes,maybe,no]",
            "fisher.n_values=200",
        ],
    )
    metrics = run(cfg, tmp_path / "pefs")
    pefs = load_pefs(tmp_path / "pefs" / "pefs.h5")
    assert metrics["kind"] == "lrm" and pefs.n_classes == 3 and pefs.logits.shape == (12, 3)
    ids = [task.word_token_ids(w)[0] for w in ("yes", "maybe", "no")]
    assert pefs.metadata["fisher_classes"] == {"mode": "label_words", "label_token_ids": ids}
    # stored labels: the index of the gold label word (toy NLI's label order)
    np.testing.assert_array_equal(pefs.labels, [ids.index(t) for t in task.labels("fit")])

    # the perturbation stage reads the file: its label check maps the task's token ids the same way
    from npeff.decomp.module import DecompSettings
    from npeff.decomp.runner import decompose
    from npeff.run.perturb import run as perturb_run

    s = DecompSettings(kind="lrm", n_components=2, n_iters_g_only=2, n_iters_joint=5, seed=0)
    decompose(tmp_path / "pefs" / "pefs.h5", s, tmp_path / "dec", progress=False)
    pcfg = compose_config(
        "perturb",
        [
            f"inputs.checkpoint={ckpt}",
            f"inputs.coeffs={tmp_path / 'dec' / 'decomposition.h5'}",
            f"inputs.pefs={tmp_path / 'pefs' / 'pefs.h5'}",
            "progress=false",
            "perturb.n_top=4",
            "perturb.n_baseline=4",
        ],
    )
    pm = perturb_run(pcfg, tmp_path / "perturb")
    assert pm["n_components"] + pm.get("n_skipped_components", 0) == 2


def test_pefs_stage_refuses_bad_lm_fisher_settings_before_work():
    from omegaconf import OmegaConf

    from npeff.run.pefs import lm_fisher_kwargs
    from npeff.tasks import build_task

    task = build_task({"name": "toy_nli_zero_shot", "n_train": 4, "n_fit": 2, "n_eval": 2})
    fc = OmegaConf.load("conf/fisher/lm.yaml")
    good = OmegaConf.merge(fc, {"classes": "label_words", "label_words": ["yes", "maybe", "no"]})
    got = lm_fisher_kwargs(good, 0, task)["classes"].label_token_ids
    assert got == tuple(task.word_token_ids(w)[0] for w in ("yes", "maybe", "no"))
    bad = OmegaConf.merge(good, {"label_words": ["yes", "not sure", "no"]})
    with pytest.raises(ValueError, match="'not sure' is 2 tokens"):
        lm_fisher_kwargs(bad, 0, task)
    yaml_bools = OmegaConf.merge(good, OmegaConf.create("label_words: [yes, maybe, no]"))
    with pytest.raises(ValueError, match="is a boolean: YAML reads unquoted yes/no"):
        lm_fisher_kwargs(yaml_bools, 0, task)
    exp = OmegaConf.load("conf/experiment/toy_nli_zero_shot.yaml")
    assert list(exp.fisher.label_words) == ["yes", "maybe", "no"]  # quoted in the recipe
    with pytest.raises(ValueError, match=r"must be in \(0, 1\]"):
        lm_fisher_kwargs(OmegaConf.merge(fc, {"q": 1.5}), 0, task)
    with pytest.raises(ValueError, match="choose topk or projection"):
        lm_fisher_kwargs(OmegaConf.merge(fc, {"compression": "pca"}), 0, task)
