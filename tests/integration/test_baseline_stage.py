"""npeff-baseline on a tiny trained toy NLI model: activations (vs a direct forward, resumed after
an interruption), each baseline's artifacts, and one clear error per bad input before any work."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from tests.helpers.compose import compose_config


def _cfg(ckpt, *overrides):
    return compose_config(
        "baseline",
        [
            f"inputs.checkpoint={ckpt}",
            "logger=none",
            "progress=false",
            "n_components=4",
            "sae.epochs=5",
            "report.n_shuffles=3",
            *overrides,
        ],
    )


def test_activation_capture_matches_forward_and_resumes(toy_checkpoint, tmp_path):
    from npeff.artifacts.activations import ActivationsWriter, load_activations
    from npeff.baselines.capture import capture_activations
    from npeff.tasks.checkpoint import load_checkpoint

    loaded = load_checkpoint(toy_checkpoint)
    loader = loaded.task.dataloader("eval", batch_size=16, shuffle=False)
    module = "hf.bert.encoder.layer.0.output"
    full = capture_activations(
        loaded.model, loader, tmp_path / "a.h5", module, "cls", progress=False
    )
    acts = load_activations(full)
    # Reference: the encoder's last hidden state at the CLS position, from HF's own outputs.
    batch = next(iter(loader))
    mask = batch["attention_mask"]
    keep = mask[:, None, None, :].float()
    with torch.no_grad():
        hs = loaded.model.hf.bert(
            input_ids=batch["input_ids"],
            attention_mask=(1.0 - keep) * torch.finfo(torch.float32).min,
            token_type_ids=batch["token_type_ids"],
        ).last_hidden_state
    np.testing.assert_allclose(acts.features[:16], hs[:, 0].numpy(), atol=1e-5)
    np.testing.assert_array_equal(acts.labels[:16], batch["labels"].numpy())
    # Mask-aware mean over the tokens.
    mean = capture_activations(
        loaded.model, loader, tmp_path / "m.h5", module, "mean", progress=False
    )
    want = (hs * mask[..., None]).sum(1) / mask.sum(1, keepdim=True)
    np.testing.assert_allclose(load_activations(mean).features[:16], want.numpy(), atol=1e-5)

    # Interrupted after one batch (a committed chunk, then the process "dies"): a rerun resumes.
    import h5py

    from npeff.artifacts import keys

    part = tmp_path / "p.h5"
    with h5py.File(full, "r") as f:
        fingerprint = json.loads(f[keys.NPEFF_GROUP].attrs[keys.ATTR_FINGERPRINT])
    w = ActivationsWriter(
        part, fingerprint=fingerprint, n_features=acts.features.shape[1], n_logits=3
    )
    w.append(
        {k: getattr(acts, k)[:16] for k in ("features", "labels", "logits", "example_indices")}
    )
    w.close()
    capture_activations(loaded.model, loader, part, module, "cls", progress=False)
    resumed = load_activations(part)
    np.testing.assert_allclose(resumed.features, acts.features, atol=1e-6)
    np.testing.assert_array_equal(resumed.example_indices, np.arange(acts.n_examples))


@pytest.mark.parametrize("name", ["kmeans", "gradient_kmeans", "sae"])
def test_baseline_stage_writes_scores_and_report(toy_checkpoint, tmp_path, name):
    from npeff.artifacts.baseline import load_baseline
    from npeff.run import baseline

    metrics = baseline.run(
        _cfg(toy_checkpoint, f"baseline={name}", "gradient.n_values=300"), tmp_path
    )
    res = load_baseline(tmp_path / "baseline.h5")
    assert res.kind == name and res.scores_eval.shape == (64, 4) and res.scores_fit.shape == (64, 4)
    assert (res.scores_eval >= 0).all()
    if name == "sae":
        assert res.membership_eval is None
        assert metrics["sae_loss_final"] < metrics["sae_loss_first"]
    else:
        np.testing.assert_array_equal(res.membership_eval.sum(axis=1), 1.0)
    for key in ("concept_components", "concept_components_shuffled"):
        assert metrics[key] is not None
    assert (tmp_path / "report.html").is_file()
    on_disk = json.loads((tmp_path / "metrics.json").read_text())
    assert on_disk["n_components"] == 4


@pytest.mark.parametrize(
    "overrides, error, match",
    [
        (["activations.module=hf.bert.nope"], ValueError, "unknown module name 'hf.bert.nope'"),
        (["activations.module=hf.bert.encoder"], TypeError, "not a tensor"),
        (["n_components=65"], ValueError, "only 64 examples"),
        (["baseline=gradient_kmeans", "n_components=65"], ValueError, "only 64 examples"),
        (["baseline=pca"], ValueError, "unknown baseline 'pca'"),
        (["baseline=sae", "sae.k=9"], ValueError, "sae.k=9"),
    ],
)
def test_bad_input_fails_before_any_work(toy_checkpoint, tmp_path, overrides, error, match):
    from npeff.run import baseline

    with pytest.raises(error, match=match):
        baseline.run(_cfg(toy_checkpoint, *overrides), tmp_path / "out")
    written = list((tmp_path / "out").glob("*")) if (tmp_path / "out").exists() else []
    assert written == [], written
