"""The torch port of a tracr model and its file, without jax (the packaged toy NLI export)."""

from __future__ import annotations

import h5py
import numpy as np
import pytest
import torch

from npeff.artifacts.tracr_model import load_tracr_model, save_tracr_model
from npeff.models.registry import build_model
from npeff.models.tracr import PACKAGED_TOY_NLI, TracrTransformer
from npeff.tasks import build_task


@pytest.fixture(scope="module")
def export():
    return load_tracr_model(PACKAGED_TOY_NLI)


def reference_residuals(export, ids: np.ndarray) -> list[np.ndarray]:
    """tracr's forward written out per example and per head in float64 numpy (independent of
    the torch module): x += Σ_h softmax(q_h k_hᵀ/√K) v_h W_o,h + b_o; x += relu(x W1 + b1) W2 + b2."""
    cfg, P = export.meta["config"], export.params
    H, K = cfg["num_heads"], cfg["key_size"]
    out = []
    for row in ids:
        x = export.token_embed[row].astype(np.float64) + export.pos_embed[: len(row)]
        res = []
        for layer in range(cfg["num_layers"]):
            a = f"layer_{layer}/attn/"
            att = np.zeros_like(x) + P[a + "linear/b"]
            for h in range(H):
                cols = slice(h * K, (h + 1) * K)
                q = x @ P[a + "query/w"][:, cols] + P[a + "query/b"][cols]
                k = x @ P[a + "key/w"][:, cols] + P[a + "key/b"][cols]
                v = x @ P[a + "value/w"][:, cols] + P[a + "value/b"][cols]
                s = q @ k.T / np.sqrt(K)
                s = np.exp(s - s.max(axis=1, keepdims=True))
                att += (s / s.sum(axis=1, keepdims=True)) @ v @ P[a + "linear/w"][cols]
            x = x + att
            res.append(x.copy())
            m = f"layer_{layer}/mlp/"
            hid = np.maximum(x @ P[m + "linear_1/w"] + P[m + "linear_1/b"], 0)
            x = x + hid @ P[m + "linear_2/w"] + P[m + "linear_2/b"]
            res.append(x.copy())
        out.append(res)
    return [np.stack([r[i] for r in out]) for i in range(len(out[0]))]


def test_port_matches_reference_forward_and_rasp_labels(export):
    model = TracrTransformer(export)
    ds = export.dataset
    rng = np.random.default_rng(0)
    pick = rng.choice(len(ds["outputs"]), size=12, replace=False)
    ids = np.asarray(ds["inputs"])[pick]
    # random token sequences too (not only valid sentences)
    rand = rng.integers(len(export.meta["input_encoding"]), size=(4, ids.shape[1]))
    rand[:, 0] = ids[0, 0]
    ids = np.concatenate([ids, rand])
    ref = reference_residuals(export, ids)
    with torch.no_grad():
        ours = model.residuals(torch.as_tensor(ids))
    err = max(float(np.abs(a.numpy() - b).max()) for a, b in zip(ours, ref))
    assert err < 1e-5
    # decoded label equals the RASP label stored at export time, on every exported example
    with torch.no_grad():
        pred = model(torch.as_tensor(ds["inputs"])).argmax(-1).numpy()
    assert (pred == ds["outputs"]).all()
    fid = export.meta["fidelity"]
    assert fid["port_max_abs_err"] <= 1e-5 and fid["rasp_agreement"] == 1.0
    assert fid["rasp_n_inputs"] >= 10000 and fid["dataset_accuracy"] == 1.0


def test_labels_and_variables_are_consistent_with_the_program(export):
    """The stored RASP variables and labels equal the program's plain-Python oracle."""
    from npeff.tracr import nli_program as P

    names = export.variable_names
    assert names == list(P.VARIABLES)
    V = np.asarray(export.dataset["variables"])
    tokens = export.meta["input_encoding"]
    ref_v, ref_y = [], []
    for row in np.asarray(export.dataset["inputs"]):
        words = [tokens[t] for t in row[1:]]
        ref = P.reference_variables(words)
        ref_v.append([ref[n] for n in names])
        ref_y.append(P.reference_label(words))
    np.testing.assert_array_equal(V, np.asarray(ref_v))
    labels = [export.meta["output_encoding"][y] for y in export.dataset["outputs"]]
    assert labels == ref_y
    # every variable is held by some examples and missed by others; labels are balanced
    assert V.any(axis=0).all() and (~V).any(axis=0).all()
    counts = np.bincount(export.dataset["outputs"], minlength=3)
    assert counts.min() > 0.3 * len(labels)
    # each variable is written by exactly one block; the ORs come after what they combine
    blocks = {v["name"]: v["blocks"] for v in export.meta["variables"]}
    assert all(len(b) == 1 for b in blocks.values())
    layer = {n: int(b[0].split("/")[0].split("_")[1]) for n, b in blocks.items()}
    assert layer["content_conflict"] > layer["subj_conflict"]
    assert layer["is_neutral"] > layer["neutral_by_adding"] > layer["adds_detail"]


def test_per_example_grads_under_vmap_match_a_loop(export):
    from torch.func import functional_call, grad, vmap

    model = TracrTransformer(export)
    ids = torch.as_tensor(export.dataset["inputs"][:4])
    params = {k: v.detach() for k, v in model.named_parameters()}

    def logp(p, x):
        return torch.log_softmax(functional_call(model, p, (x[None],)), -1)[0, 0]

    g = vmap(grad(logp), in_dims=(None, 0))(params, ids)
    for i in range(len(ids)):
        model.zero_grad()
        torch.log_softmax(model(ids[i : i + 1]), -1)[0, 0].backward()
        for k, p in model.named_parameters():
            torch.testing.assert_close(g[k][i], p.grad, rtol=1e-4, atol=1e-5)


def test_task_and_model_from_configs():
    task = build_task({"name": "tracr", "n_train": 8, "n_fit": 100, "n_eval": 100})
    assert task.num_classes == 3 and task.concepts("fit").shape == (100, len(task.concept_names))
    assert "negation_present" in task.concept_names and any("&" in n for n in task.concept_names)
    model = build_model({"name": "tracr", "path": None}, task.model_hints())
    batch = task.tensors("eval")
    logits = model(input_ids=batch["input_ids"])
    assert logits.shape == (100, 3)
    assert (logits.argmax(-1) == batch["labels"]).all()
    rec = task.examples("eval")[0]
    assert len(rec["text"].split()) == 5 and len(rec["text_pair"].split()) == 5


def test_bad_inputs(tmp_path, export):
    # a model file used with another task
    toy = build_task({"name": "toy_nli", "n_train": 30, "n_fit": 10, "n_eval": 10})
    with pytest.raises(ValueError, match="must be used with task=tracr"):
        build_model({"name": "tracr", "path": None}, toy.model_hints())
    # the task reads another export than the model
    with pytest.raises(ValueError, match="is not the file the task reads"):
        build_model({"name": "tracr", "path": None}, {"tracr_uid": "0123456789abcdef"})
    # an exported file of another version
    other = tmp_path / "v0.h5"
    save_tracr_model(export, other)
    with h5py.File(other, "a") as f:
        f.attrs["version"] = 0
    with pytest.raises(ValueError, match="version 0; this npeff reads version 1"):
        load_tracr_model(other)
    # an unknown program (checked before tracr is imported)
    from npeff.tracr.compile import compile_and_export

    with pytest.raises(ValueError, match="unknown tracr program 'nope'; available programs"):
        compile_and_export({"program": "nope", "temperature": 0.25}, tmp_path / "x.h5")
    # a foreign file and a missing file
    foreign = tmp_path / "foreign.h5"
    with h5py.File(foreign, "w") as f:
        f.attrs["format"] = "something-else"
    with pytest.raises(ValueError, match="not a tracr model file"):
        load_tracr_model(foreign)
    with pytest.raises(FileNotFoundError, match="npeff-tracr-compile"):
        load_tracr_model(tmp_path / "missing.h5")
