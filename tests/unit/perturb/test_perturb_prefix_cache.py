"""Prefix caching of perturbed forwards (npeff/perturb/prefix_cache.py) against full forwards."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from npeff.perturb.evaluation import EvalSettings, PerturbationEvaluator
from npeff.perturb.prefix_cache import PrefixCache, prefix_for_batch
from npeff.perturb.vector import ModelPerturber, ParameterVector
from tests.helpers.problems import TOP, bert2, layout_and_cache, problem


@pytest.mark.parametrize("patterns", [TOP, ["bert.encoder.layer.0.output.*", "classifier.*"]])
def test_cached_logits_equal_full_forward_under_perturbation(patterns):
    model, ds = bert2()
    layout, cache = layout_and_cache(patterns, model, ds)
    pc = PrefixCache.build(model, cache, layout.names, batch_size=3)
    assert pc is not None and "bert.embeddings" in pc.plan.frozen
    v = ParameterVector(layout, torch.randn(layout.n_parameters, dtype=torch.float64))
    idx = np.array([0, 2, 3, 7, 8, 10])  # crosses stored batches, regrouped at batch_size 3
    with ModelPerturber(model, layout).perturbed(v, 0.3):
        full = cache.logits(model, idx, 3)
        cached = pc.logits(idx, 3)
    torch.testing.assert_close(cached, full, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(pc.logits(None, 5), cache.logits(model, None, 5))


def test_evaluator_kls_identical_with_and_without_cache():
    model, ds = bert2()
    layout, cache = layout_and_cache(TOP, model, ds)
    W = np.random.default_rng(0).random((cache.n, 2))
    evs = [
        PerturbationEvaluator(
            model,
            cache,
            layout,
            W,
            np.ones(cache.n),
            EvalSettings(n_top=4, n_baseline=5, batch_size=4, cache_prefix=c),
            progress=False,
        )
        for c in (True, False)
    ]
    assert evs[0].prefix is not None and evs[1].prefix is None
    v = ParameterVector(layout, torch.randn(layout.n_parameters, dtype=torch.float64))
    a, b = (ev.evaluate(1, v, 0.5) for ev in evs)
    for key in ("kl_top", "kl_baseline", "kl_top_reverse", "acc_all_after"):
        np.testing.assert_allclose(getattr(a, key), getattr(b, key), rtol=1e-10)
    assert (a.kl_top > 0).all()


def test_no_prefix_when_the_embeddings_are_perturbed():
    model, ds = bert2()
    layout, cache = layout_and_cache(None, model, ds)
    assert PrefixCache.build(model, cache, layout.names) is None


def test_batch_prefix_runs_the_suffix_under_overrides():
    """The COAR-style entry point: one batch, parameter overrides, originals restored."""
    model, ds = problem("mlp", n=5)
    batch = torch.utils.data.default_collate([ds[i] for i in range(5)])
    names = ["net.2.weight", "net.2.bias"]
    bp = prefix_for_batch(model, batch, names)
    assert bp.plan is not None and bp.plan.frozen == ["net.0", "net.1"]
    w = model.net[2].weight.detach().clone()
    masked = {"net.2.weight": w * (torch.rand_like(w) > 0.5)}
    got = bp.run(masked)
    with torch.no_grad():
        ref = torch.nn.functional.linear(
            torch.tanh(model.net[0](batch["x"])), masked["net.2.weight"], model.net[2].bias
        )
    torch.testing.assert_close(got, ref, rtol=1e-12, atol=1e-12)
    assert torch.equal(model.net[2].weight, w)  # restored
    torch.testing.assert_close(bp.run(), model(batch["x"]).detach())
    with pytest.raises(ValueError, match="outside the perturbed set"):
        bp.run({"net.0.weight": model.net[0].weight.detach()})
