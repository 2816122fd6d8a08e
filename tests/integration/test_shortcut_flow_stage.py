"""`npeff experiment=shortcut_fix` end to end on a shrunk config (the §3.5 flow on a planted
shortcut), and the Coar-Edit step, which runs only where npeff.coar is installed."""

from __future__ import annotations

import json

import pytest

from npeff.coar import shortcut as shortcut_coar
from npeff.run import pipeline
from tests.helpers.compose import compose_config, run_pipeline

SHRUNK = [
    "experiment=shortcut_fix",
    "logger=none",
    "progress=false",
    "task.n_train=600",
    "task.n_fit=160",
    "task.n_eval=160",
    "task.shortcut.rate=0.3",
    "task.shortcut.p=1.0",
    "model.hidden_size=32",
    "model.num_layers=1",
    "model.intermediate_size=64",
    "trainer.max_epochs=4",
    "trainer.enable_model_summary=false",
    "fisher.n_values=300",
    "decomp.n_components=4",
    "decomp.n_iters_g_only=5",
    "decomp.n_iters_joint=30",
    "steps.expand.n_new_components=3",
    "stages.expand.decomp.n_iters_joint=30",
    "perturb.n_top=16",
    "perturb.flawed.min_incorrect=1",
    "+stages.fit.n_iters=50",
    "+stages.report.n_shuffles=5",
    "+stages.shortcut.min_incorrect=1",
    "+stages.shortcut.n_shuffles=10",
    "+stages.shortcut.gradient.n_bisect=2",
    "+stages.shortcut.coar.n_masks=40",
    "+stages.shortcut.coar.n_references=32",
    "+stages.shortcut.coar.ks=[1,4]",
    "+stages.shortcut.coar.units=[{pattern: hf.bert.encoder.layer.*.intermediate.dense.weight, granularity: neuron}]",
]


@pytest.fixture(scope="module")
def shrunk(tmp_path_factory):
    """The shrunk experiment run once: (pipeline config, run dir, headline metrics)."""
    tmp = tmp_path_factory.mktemp("shortcut")
    cfg = compose_config("pipeline", SHRUNK + [f"paths.output_dir={tmp / 'o'}"])
    return cfg, tmp / "run", pipeline.run(cfg, tmp / "run")


@pytest.mark.slow
def test_shortcut_fix_end_to_end(shrunk):
    _, run_dir, metrics = shrunk
    tmp_path = run_dir.parent
    sc = metrics["shortcut"]
    assert sc["selection_split"] == "fit"
    assert (run_dir / "fit_select" / "coeffs.h5").is_file()
    for key in (
        "conflict_acc_before",
        "frac_flawed_expanded",
        "frac_flawed_original",
        "frac_cue_flawed_expanded_shuffled",
    ):
        assert key in sc
    assert 0.0 <= sc["frac_flawed_expanded"] <= 1.0
    assert sc["n_expanded"] == 3 and sc["n_original"] == 4
    assert sc["npeff"]["conflict_acc_after"] is not None  # at least one edit was scored
    assert sc["paper"]["frac_flawed_expanded"] == 0.41
    root = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert root["shortcut"]["conflict_acc_before"] == sc["conflict_acc_before"]
    summary = json.loads((tmp_path / "run" / "shortcut" / "shortcut.json").read_text())
    kinds = {r["kind"] for r in summary["edits"]}
    assert kinds == {"+0.3", "-0.3", "gradient"}
    for r in summary["edits"]:
        assert set(r["after"]) == {"eval", "fit"}
        assert set(r["after"]["eval"]) == {"conflict", "other", "cue_free", "all"}
    train = json.loads((tmp_path / "run" / "train" / "metrics.json").read_text())
    assert "shortcut_eval_conflict_acc" in train and "shortcut_eval_other_acc" in train
    html = (tmp_path / "run" / "report" / "report.html").read_text()
    assert "Planted shortcut" in html and "41%" in html
    assert sc["coar"]["available"] == shortcut_coar.available()
    if sc["coar"]["available"]:
        assert [r["k"] for r in summary["coar"]["sweep"]] == [0, 1, 4]


def _choices(summary: dict) -> dict:
    """Everything the stage chose: components, every edit's kind and scale, the best edits."""
    best = {
        name: None if b is None else (b["component"], b["kind"], b["scale"])
        for name, b in summary["best"].items()
    }
    edits = [(r["component"], r["kind"], r["scale"]) for r in summary["edits"]]
    coar = None if summary["coar"] is None else summary["coar"].get("best", {}).get("k")
    return {"selected": summary["selected_components"], "edits": edits, "best": best, "coar": coar}


@pytest.mark.slow
def test_eval_labels_choose_nothing(shrunk, tmp_path, monkeypatch):
    """Permuting the eval labels changes the reported eval figures, never a choice: the flawed
    components, each edit's sign and scale and the best edit come from the fit split."""
    import numpy as np

    from npeff.run import shortcut
    from npeff.run.configs import stage_config

    cfg, run_dir, _ = shrunk
    inputs = {
        "checkpoint": str(run_dir / "train" / "model.ckpt"),
        "decomposition": str(run_dir / "expand" / "decomposition.h5"),
        "coeffs": str(run_dir / "fit" / "coeffs.h5"),
        "pefs": str(run_dir / "pefs_eval" / "pefs.h5"),
        "select_coeffs": str(run_dir / "fit_select" / "coeffs.h5"),
    }
    if not (run_dir / "train" / "model.ckpt").is_file():  # reused from the training cache
        inputs["checkpoint"] = json.loads((run_dir / "train" / "metrics.json").read_text())[
            "checkpoint"
        ]
    stage_cfg = stage_config(
        cfg, "shortcut", inputs=inputs, shortcut_fix={"expansion_components": [0, 1, 2]}
    )
    shortcut.run(stage_cfg, tmp_path / "plain")
    plain = json.loads((tmp_path / "plain" / "shortcut.json").read_text())

    from npeff.tasks.checkpoint import load_checkpoint

    model = load_checkpoint(inputs["checkpoint"]).model.eval()
    split_examples = shortcut._split_examples

    def relabelled(how):
        def wrapped(task, split, batch_size, n=None):
            sp, concepts = split_examples(task, split, batch_size, n)
            if split == "eval":
                if how == "permuted":
                    new = sp.cache.labels[np.random.default_rng(0).permutation(sp.cache.n)]
                else:  # the model's own predictions: no eval error left to select on
                    new = sp.cache.logits(model, None, batch_size).argmax(-1)
                sp.cache.labels = new.long()
                start = 0
                for b in sp.cache.batches():
                    size = len(b["labels"])
                    b["labels"] = sp.cache.labels[start : start + size].clone()
                    start += size
            return sp, concepts

        return wrapped

    for how in ("permuted", "predicted"):
        monkeypatch.setattr(shortcut, "_split_examples", relabelled(how))
        shortcut.run(stage_cfg, tmp_path / how)
        other = json.loads((tmp_path / how / "shortcut.json").read_text())
        assert other["before"]["eval"] != plain["before"]["eval"]  # the labels did reach eval
        assert _choices(other) == _choices(plain), how


def test_shortcut_fix_needs_the_expansion(tmp_path):
    with pytest.raises(ValueError, match="steps.expand.enabled"):
        run_pipeline(["experiment=shortcut_fix", "steps.expand.enabled=false"], tmp_path)
    assert not (tmp_path / "train").exists()


@pytest.mark.skipif(not shortcut_coar.available(), reason="npeff.coar (issue 12) is not installed")
def test_coar_edit_step_sweeps_k(tmp_path):
    """Coar-Edit via npeff.coar: every k is scored on every split and k=0 is the unedited model."""
    import numpy as np
    from omegaconf import OmegaConf

    from npeff.analysis.shortcut import group_masks
    from npeff.models import build_model
    from npeff.models.core import parameter_layout
    from npeff.perturb.examples import ExampleCache
    from npeff.perturb.shortcut import EditScorer, SplitExamples
    from npeff.perturb.vector import ModelPerturber
    from npeff.tasks import build_task

    task = build_task(
        {
            "name": "toy_nli",
            "n_train": 100,
            "n_fit": 80,
            "n_eval": 80,
            "seed": 1,
            "shortcut": {"label": "entailment", "p": 1.0, "rate": 0.3, "mode": "relabel"},
        }
    )
    model = build_model(
        OmegaConf.create(
            {
                "name": "tiny_bert",
                "hidden_size": 16,
                "num_layers": 1,
                "num_heads": 2,
                "intermediate_size": 32,
                "dropout": 0.0,
                "attn_implementation": "eager",
                "trainable": None,
            }
        ),
        task.model_hints(),
    ).eval()
    splits = {}
    for split in ("fit", "eval"):
        cache = ExampleCache(task.dataloader(split, 64))
        splits[split] = SplitExamples(cache, group_masks(task.concepts(split), task.concept_names))
    perturber = ModelPerturber(model, parameter_layout(model))
    scorer = EditScorer(model, perturber, splits, 64)
    # an untrained model errs on some conflicting examples; make every one a target
    preds = splits["fit"].cache.logits(model).argmax(-1).numpy()
    assert ((preds != splits["fit"].cache.labels.numpy()) & splits["fit"].masks["conflict"]).any()
    cfg = OmegaConf.create(
        {
            "progress": False,
            "shortcut_fix": {
                "batch_size": 64,
                "seed": 0,
                "coar": {
                    "units": [
                        {
                            "pattern": "hf.bert.encoder.layer.*.intermediate.dense.weight",
                            "granularity": "neuron",
                        }
                    ],
                    "alpha": 0.1,
                    "n_masks": 50,
                    "ks": [1, 2],
                    "n_targets": None,
                    "n_references": 16,
                    "solver": "ridge",
                    "ridge": 1.0,
                    "evaluate": False,
                },
            },
        }
    )
    out = shortcut_coar.run_coar_edit(
        model, scorer, cfg, tmp_path, select_on="fit", max_other_drop=0.02
    )
    assert [r["k"] for r in out["sweep"]] == [0, 1, 2]
    assert out["sweep"][0]["after"] == scorer.before
    assert np.isfinite(out["best"]["after"]["eval"]["all"])
