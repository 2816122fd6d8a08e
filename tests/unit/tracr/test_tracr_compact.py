"""The compact TRACR model (dead heads / hidden units left out) against the full one: the same
forward, per-example class gradients equal to the full model's on the kept entries with the full
model's gradients exactly zero everywhere else, every parameter on the per-layer Fisher fast
path, and layer-check masks that are the full model's restricted to the kept entries."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch

from npeff.artifacts.tracr_model import load_tracr_model
from npeff.fisher.fast import FisherEngine
from npeff.models.core import parameter_layout
from npeff.models.tracr import PACKAGED_TOY_NLI, TracrTransformer, _tracr_value, live_units
from npeff.tracr.layers import variable_masks


@pytest.fixture(scope="module")
def export():
    return load_tracr_model(PACKAGED_TOY_NLI)


def _full_positions(export, compact, full) -> np.ndarray:
    """int [m_compact]: the flat position in ``full``'s parameter vector of each entry of
    ``compact``'s (tracr's arrays replaced by their own flat indices, sliced both ways)."""
    cfg = export.meta["config"]
    K, H, hid = int(cfg["key_size"]), int(cfg["num_heads"]), int(cfg["mlp_hidden_size"])
    index = copy.copy(export)
    index.params = {k: np.arange(np.size(v)).reshape(np.shape(v)) for k, v in export.params.items()}
    kept = live_units(export)
    lay_c, lay_f = parameter_layout(compact), parameter_layout(full)
    off_f = dict(zip(lay_f.names, lay_f.offsets))
    out = []
    for name in lay_c.names:
        layer = int(name.split(".")[1])
        tracr_c = _tracr_value(index, name, *kept[layer], K).numpy().astype(np.int64).reshape(-1)
        tracr_f = _tracr_value(index, name, np.arange(H), np.arange(hid), K).numpy()
        tracr_f = tracr_f.astype(np.int64).reshape(-1)  # tracr flat index at each full position
        where = np.empty(tracr_f.size, dtype=np.int64)
        where[tracr_f] = np.arange(tracr_f.size)
        out.append(off_f[name] + where[tracr_c])
    return np.concatenate(out)


def test_compact_model_keeps_forward_and_fishers(export):
    compact = TracrTransformer(export).eval()
    full = TracrTransformer(export, compact=False).eval()
    assert full.n_parameters == 1_453_616 and compact.n_parameters == 223_497
    ids = torch.as_tensor(np.asarray(export.dataset["inputs"])[:40])
    with torch.no_grad():
        for a, b in zip(compact.residuals(ids), full.residuals(ids)):
            torch.testing.assert_close(a, b, rtol=0, atol=1e-6)

    pos = _full_positions(export, compact, full)
    assert np.unique(pos).size == pos.size == compact.n_parameters
    batch = {"input_ids": ids[:6], "labels": torch.as_tensor(export.dataset["outputs"][:6])}
    classes = torch.arange(3).expand(6, 3)
    grads = []
    for model in (compact, full):
        eng = FisherEngine(model, list(model.named_parameters()), "auto")
        p = torch.softmax(eng.logits(batch), -1)
        grads.append(eng.class_grads(batch, classes, 3, p.sqrt()))
        assert not eng.func_names  # every parameter on the per-layer fast path
    gc, gf = grads
    torch.testing.assert_close(gc, gf[:, :, pos], rtol=1e-5, atol=1e-6)
    rest = np.ones(full.n_parameters, dtype=bool)
    rest[pos] = False
    assert float(gf[:, :, rest].abs().max()) == 0.0  # the dropped entries never get gradient
    assert float(gc.abs().max()) > 0

    mc = variable_masks(export, parameter_layout(compact))
    mf = variable_masks(export, parameter_layout(full))
    for v in export.variable_names:
        np.testing.assert_array_equal(mc.block[v], mf.block[v][pos])
        np.testing.assert_array_equal(mc.unit[v], mf.unit[v][pos])
        assert mc.unit[v].sum() == mf.unit[v].sum()  # no writing unit was dropped
