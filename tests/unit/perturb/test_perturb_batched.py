"""Several perturbed parameter sets per vmapped forward (npeff/perturb/batched.py) against one
forward per set."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from npeff.perturb.evaluation import EvalSettings, PerturbationEvaluator
from npeff.perturb.vector import ParameterVector
from tests.helpers.problems import TOP, DictDataset, bert2, layout_and_cache


def _evaluator(model, cache, layout, W, sets, cache_prefix=True, eval_all=True):
    settings = EvalSettings(
        n_top=4,
        n_baseline=6,
        batch_size=3,
        sets_per_forward=sets,
        cache_prefix=cache_prefix,
        eval_all=eval_all,
    )
    return PerturbationEvaluator(
        model, cache, layout, W, np.ones(cache.n), settings, progress=False
    )


FIELDS = ("kl_top", "kl_baseline", "kl_top_reverse", "kl_baseline_reverse", "acc_top_after")


@pytest.mark.parametrize(
    "patterns,cache_prefix,eval_all",
    [(TOP, True, True), (TOP, False, False), (["*"], True, False)],
)
def test_stacked_sets_give_the_kls_of_one_forward_per_set(patterns, cache_prefix, eval_all):
    model, ds = bert2()
    layout, cache = layout_and_cache(patterns, model, ds)
    W = np.random.default_rng(0).random((cache.n, 5))
    g = torch.Generator().manual_seed(1)
    items = [
        (
            j,
            ParameterVector(layout, torch.randn(layout.n_parameters, generator=g).double()),
            0.3,
            {},
        )
        for j in range(5)
    ]
    one = _evaluator(model, cache, layout, W, 1, cache_prefix, eval_all)
    many = _evaluator(model, cache, layout, W, 4, cache_prefix, eval_all)  # 10 sets: 4 + 4 + 2
    ref = [one.evaluate(j, v, s) for j, v, s, _ in items]
    got = many.evaluate_many(items)
    assert many.stacker.usable is True and one.stacker.usable is False
    for r, q in zip(ref, got):
        assert r.component == q.component
        np.testing.assert_array_equal(r.top, q.top)
        for f in FIELDS:
            np.testing.assert_allclose(getattr(q, f), getattr(r, f), rtol=1e-9, atol=1e-12)
    assert max(float(np.abs(r.kl_top).max()) for r in ref) > 1e-4  # the perturbation matters
    for name, p in model.named_parameters():  # θ untouched
        torch.testing.assert_close(p, one.perturber.original.get(name, p), rtol=0, atol=0)


class _Unbatchable(torch.nn.Module):
    """A forward vmap cannot batch (a data-dependent Python branch on a parameter)."""

    def __init__(self):
        super().__init__()
        self.lin = torch.nn.Linear(3, 2)

    def forward(self, x):
        if float(self.lin.weight.sum()) > 1e9:  # .item() under vmap raises
            return x[:, :2]
        return self.lin(x)


def test_unbatchable_model_falls_back_to_one_forward_per_set():
    from npeff.artifacts.layout import ParameterLayout
    from npeff.perturb.examples import ExampleCache

    torch.manual_seed(0)
    model = _Unbatchable().eval()
    ds = DictDataset({"x": torch.randn(7, 3), "labels": torch.randint(0, 2, (7,))})
    layout = ParameterLayout.from_named_tensors(list(model.named_parameters()))
    cache = ExampleCache(torch.utils.data.DataLoader(ds, batch_size=3))
    W = np.random.default_rng(0).random((7, 2))
    v = ParameterVector(layout, torch.randn(layout.n_parameters))
    many = _evaluator(model, cache, layout, W, 4)
    one = _evaluator(model, cache, layout, W, 1)
    got = many.evaluate_many([(0, v, 0.5, None), (1, v, 0.2, None)])
    assert many.stacker.usable is False
    for j, s, q in zip((0, 1), (0.5, 0.2), got):
        np.testing.assert_array_equal(q.kl_top, one.evaluate(j, v, s).kl_top)
