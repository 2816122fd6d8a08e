"""The npeff-pefs and npeff-filter stages on a tiny checkpoint (toy NLI task, tiny BERT)."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest
import torch
from omegaconf import OmegaConf

import npeff.fisher
from npeff.artifacts.pefs import PefsFileError, load_dataset_fisher, load_pefs
from npeff.models import build_model, save_checkpoint
from npeff.tasks import build_task
from npeff.tasks.checkpoint import load_checkpoint
from tests.helpers.compose import compose_config
from tests.helpers.problems import PEFS_MODEL, PEFS_TASK
from tests.helpers.references import dense_class_grads

os.environ.setdefault("WANDB_MODE", "disabled")


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    task = build_task(PEFS_TASK)
    torch.manual_seed(0)
    model = build_model(PEFS_MODEL, task.model_hints())
    path = tmp_path_factory.mktemp("train") / "model.ckpt"
    save_checkpoint(path, model, {"model": PEFS_MODEL, "task": PEFS_TASK})
    return path


def pefs_cfg(checkpoint, *overrides):
    return compose_config(
        "pefs", [f"inputs.checkpoint={checkpoint}", "progress=false", "batch_size=4", *overrides]
    )


def run_pefs(cfg, out):
    from npeff.run.pefs import run

    return run(cfg, out)


def test_lrm_stage_matches_dense_reference(checkpoint, tmp_path):
    cfg = pefs_cfg(checkpoint, "split=fit", "n_examples=6", "fisher.n_values=40")
    metrics = run_pefs(cfg, tmp_path)
    assert json.loads((tmp_path / "metrics.json").read_text()) == metrics
    assert metrics["n_examples"] == 6 and metrics["examples_per_s"] > 0
    assert 0 < metrics["mean_captured_fraction"] <= 1
    pefs = load_pefs(tmp_path / "pefs.h5")
    assert pefs.metadata["split"] == "fit" and pefs.kind == "lrm" and pefs.n_classes == 3
    assert pefs.metadata["model_identity"]["checkpoint"] == str(checkpoint)
    assert pefs.metadata["config"]["fisher"]["n_values"] == 40
    loaded = load_checkpoint(checkpoint)
    ds = loaded.task.dataloader("fit", batch_size=6).dataset
    m = pefs.n_parameters
    assert m == sum(p.numel() for p in loaded.model.parameters())
    for i in (0, 5):
        ex = {k: v for k, v in ds[i].items()}
        logp, g = dense_class_grads(loaded.model, ex)
        a = (logp.exp().sqrt()[:, None] * g).numpy()
        rows = np.repeat(np.arange(3), np.diff(pefs.col_offsets[i]))
        np.testing.assert_allclose(pefs.values[i], a[rows, pefs.indices[i]], rtol=1e-3, atol=1e-6)
        kept = np.abs(a).reshape(-1)[rows * m + pefs.indices[i]]
        rest = np.delete(np.abs(a).reshape(-1), rows * m + pefs.indices[i])
        assert kept.min() >= rest.max() - 1e-6
        np.testing.assert_allclose(pefs.norms[i], np.linalg.norm(a.T @ a), rtol=1e-4)


def test_diag_stage_with_dataset_fisher_and_param_selection(checkpoint, tmp_path):
    cfg = pefs_cfg(
        checkpoint,
        "fisher=diag",
        "fisher.n_values=20",
        "fisher.dataset_fisher=true",
        "fisher.dataset_fisher_mode=sampling",
        "n_examples=5",
        "params.include=[hf.classifier.*]",
        "logger=csv",
    )
    metrics = run_pefs(cfg, tmp_path)
    pefs = load_pefs(tmp_path / "pefs.h5")
    assert pefs.kind == "diag" and pefs.layout.names == (
        "hf.classifier.weight",
        "hf.classifier.bias",
    )
    dsf = load_dataset_fisher(tmp_path / "dsf.h5")
    assert dsf.shape == (pefs.n_parameters,) and (dsf >= 0).all() and dsf.sum() > 0
    assert metrics["dataset_fisher"] == str(tmp_path / "dsf.h5")
    logged = list(tmp_path.glob("csv/**/metrics.csv"))
    assert logged and "pefs/examples_per_s" in logged[0].read_text()


def test_stage_resumes_interrupted_run(checkpoint, tmp_path, monkeypatch):
    """A run stopped after 2 chunks; the same command (new Hydra run dir) resumes it."""
    real = npeff.fisher.compute_pefs

    def stop_after_two_chunks(*args, **kwargs):
        def on_chunk(n):
            if n >= 8:
                raise KeyboardInterrupt

        return real(*args, on_chunk=on_chunk, **kwargs)

    cfg = pefs_cfg(checkpoint, "n_examples=10", "fisher.n_values=30")
    first = tmp_path / "outputs" / "pefs" / "2026-01-01" / "10-00-00"
    monkeypatch.setattr(npeff.fisher, "compute_pefs", stop_after_two_chunks)
    with pytest.raises(KeyboardInterrupt):
        run_pefs(cfg, first)
    monkeypatch.setattr(npeff.fisher, "compute_pefs", real)
    with pytest.raises(PefsFileError, match="incomplete"):
        load_pefs(first / "pefs.h5")
    second = tmp_path / "outputs" / "pefs" / "2026-01-01" / "10-05-00"
    metrics = run_pefs(cfg, second)
    assert metrics["n_examples"] == 10 and metrics["n_examples_computed"] == 2
    fresh = run_pefs(
        pefs_cfg(checkpoint, "n_examples=10", "fisher.n_values=30", "resume=false"),
        tmp_path / "fresh",
    )
    a, b = load_pefs(second / "pefs.h5"), load_pefs(Path(fresh["pefs"]))
    for f in ("values", "indices", "norms", "labels", "logits", "col_offsets"):
        np.testing.assert_array_equal(getattr(a, f), getattr(b, f))


def test_filter_stage(checkpoint, tmp_path):
    from npeff.run.filter_pefs import run as run_filter

    run_pefs(pefs_cfg(checkpoint, "n_examples=8", "fisher.n_values=10"), tmp_path / "p")
    cfg = compose_config(
        "filter_pefs",
        [f"inputs.pefs={tmp_path / 'p' / 'pefs.h5'}", "filter.incorrect_only=true"],
    )
    metrics = run_filter(cfg, tmp_path / "f")
    full, sub = load_pefs(tmp_path / "p" / "pefs.h5"), load_pefs(tmp_path / "f" / "pefs.h5")
    wrong = np.flatnonzero(full.predictions != full.labels)
    assert metrics["n_examples_out"] == len(wrong) == sub.n_examples
    np.testing.assert_array_equal(sub.source_indices, wrong)
    np.testing.assert_allclose(metrics["fraction_correct"], 1 - len(wrong) / 8)
    assert OmegaConf.to_container(cfg)["filter"]["incorrect_only"] is True
