"""COAR units on the TRACR model (compact: dead units left out): presets ``heads`` / ``neurons``;
a masked forward (activation masking and vmap) equals the full model rebuilt from an export whose
unit weights were zeroed in tracr's own layout (w [in, out]: a head = key_size columns of query/key/value and rows of the
output projection; a neuron = a column of the MLP's first weight)."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch

from npeff.artifacts.tracr_model import load_tracr_model
from npeff.coar.ablation import AblationEngine
from npeff.models.tracr import PACKAGED_TOY_NLI, TracrTransformer, live_units
from npeff.models.units import build_unit_map


@pytest.fixture(scope="module")
def export():
    return load_tracr_model(PACKAGED_TOY_NLI)


def _zeroed_export(export, heads=(), neurons=()):
    """A copy of ``export`` with heads ``(layer, h)`` / neurons ``(layer, j)`` zeroed (biases
    kept), written against tracr's parameter names and orientation."""
    out = copy.copy(export)
    params = {k: np.array(v, copy=True) for k, v in export.params.items()}
    key = int(export.meta["config"]["key_size"])
    for layer, h in heads:
        cols = slice(h * key, (h + 1) * key)
        for w in ("query", "key", "value"):
            params[f"layer_{layer}/attn/{w}/w"][:, cols] = 0
        params[f"layer_{layer}/attn/linear/w"][cols, :] = 0
    for layer, j in neurons:
        params[f"layer_{layer}/mlp/linear_1/w"][:, j] = 0
    out.params = params
    return out


def _live(export, block: str, layer: int, size: int) -> list[int]:
    """Indices of heads / hidden units that write something (non-zero output weights)."""
    if block == "attn":
        w = np.abs(export.params[f"layer_{layer}/attn/linear/w"])
        per = w.reshape(int(export.meta["config"]["num_heads"]), size, -1).max(axis=(1, 2))
    else:
        per = np.abs(export.params[f"layer_{layer}/mlp/linear_2/w"]).max(axis=1)
    return [int(i) for i in np.flatnonzero(per > 0)]


@pytest.mark.parametrize("method", ["activation", "vmap"])
def test_masked_forward_equals_zeroed_weights(export, method):
    model = TracrTransformer(export).eval()
    cfg = export.meta["config"]
    heads = build_unit_map(model, "heads")
    neurons = build_unit_map(model, "neurons")
    kept = live_units(export)  # compact model: unit r of a layer is tracr's kept[layer][.][r]
    assert len(heads) == sum(len(h) for h, _ in kept) and heads.names[0] == "layers.1.attn:head0"
    assert len(neurons) == sum(len(n) for _, n in kept)
    assert set(neurons.params) == {
        f"layers.{i}.mlp.linear_1.weight" for i, (_, n) in enumerate(kept) if len(n)
    }
    full = TracrTransformer(export, compact=False)
    n_layers, n_heads = cfg["num_layers"], cfg["num_heads"]
    assert len(build_unit_map(full, "heads")) == n_layers * n_heads
    assert len(build_unit_map(full, "neurons")) == n_layers * cfg["mlp_hidden_size"]

    def head_unit(layer, h):
        r = int(np.flatnonzero(kept[layer][0] == h)[0])
        return heads.names.index(f"layers.{layer}.attn:head{r}")

    def neuron_unit(layer, j):
        r = int(np.flatnonzero(kept[layer][1] == j)[0])
        return neurons.names.index(f"layers.{layer}.mlp.linear_1.weight[{r}]")

    ids = torch.as_tensor(np.asarray(export.dataset["inputs"])[:24])
    batch = {"input_ids": ids, "labels": torch.as_tensor(export.dataset["outputs"][:24])}
    with torch.no_grad():
        base = model(input_ids=ids)

    # heads: ablate the live heads of layer 1 and 2 (one mask each, then both)
    live = [(1, h) for h in _live(export, "attn", 1, cfg["key_size"])]
    live += [(2, h) for h in _live(export, "attn", 2, cfg["key_size"])]
    assert len(live) >= 2
    masks = [[live[0]], [live[1]], live[:2]]
    keep = torch.ones(len(masks), len(heads), dtype=torch.bool)
    for r, mk in enumerate(masks):
        for layer, h in mk:
            keep[r, head_unit(layer, h)] = False
    got = AblationEngine(model, heads, method=method).logits(keep, batch)
    changed = 0
    for r, mk in enumerate(masks):
        ref = TracrTransformer(_zeroed_export(export, heads=mk), compact=False).eval()
        with torch.no_grad():
            want = ref(input_ids=ids)
        torch.testing.assert_close(got[r], want, rtol=1e-5, atol=1e-4)
        changed += int(not torch.allclose(want, base, atol=1e-3))
    assert changed >= 1  # the ablations matter, so the comparison can fail

    # neurons: live hidden units of the MLP writing subj_conflict (layer 2) and of layer 5
    n2 = _live(export, "mlp", 2, 0)[:3]
    n5 = _live(export, "mlp", 5, 0)[:2]
    mk = [(2, j) for j in n2] + [(5, j) for j in n5]
    keep = torch.ones(2, len(neurons), dtype=torch.bool)
    for layer, j in mk:
        keep[1, neuron_unit(layer, j)] = False
    got = AblationEngine(model, neurons, method=method).logits(keep, batch)
    ref = TracrTransformer(_zeroed_export(export, neurons=mk), compact=False).eval()
    with torch.no_grad():
        want = ref(input_ids=ids)
    torch.testing.assert_close(got[0], base, rtol=1e-5, atol=1e-4)
    torch.testing.assert_close(got[1], want, rtol=1e-5, atol=1e-4)
