"""KL evaluation against a manual computation; batching, forward counts and result assembly."""

import math

import numpy as np
import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader

from npeff.analysis.top_examples import top_indices
from npeff.artifacts.decomposition import Decomposition
from npeff.artifacts.layout import ParameterLayout
from npeff.perturb.components import perturb_lrm
from npeff.perturb.directions import lrm_direction
from npeff.perturb.evaluation import EvalSettings, PerturbationEvaluator
from npeff.perturb.examples import ExampleCache
from npeff.perturb.metrics import per_example_kl, random_baseline, summary_medians


class CountingMLP(nn.Module):
    def __init__(self, d=5, c=3):
        super().__init__()
        self.net = nn.Sequential(nn.Linear(d, 8), nn.Tanh(), nn.Linear(8, c))
        self.calls = 0
        self.rows = 0

    def forward(self, x):
        self.calls += 1
        self.rows += x.shape[0]
        return self.net(x)


def fwd(model, batch):
    return model(**{k: v for k, v in batch.items() if k != "labels"})


def _data(n=40, d=5, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, d, generator=g)
    y = torch.randint(0, 3, (n,), generator=g)
    return x, y


def _loader(x, y, bs=7):
    items = [{"x": x[i], "labels": y[i]} for i in range(len(y))]
    return DataLoader(items, batch_size=bs, shuffle=False)


def test_per_example_kl_matches_explicit_sum():
    rng = np.random.default_rng(0)
    p_logits = rng.normal(size=(6, 4)) * 3
    q_logits = rng.normal(size=(6, 4)) * 3
    got = per_example_kl(torch.tensor(p_logits), torch.tensor(q_logits)).numpy()
    for i in range(6):
        zp = [math.exp(v) for v in p_logits[i]]
        zq = [math.exp(v) for v in q_logits[i]]
        p = [v / sum(zp) for v in zp]
        q = [v / sum(zq) for v in zq]
        ref = sum(pi * math.log(pi / qi) for pi, qi in zip(p, q))
        assert got[i] == pytest.approx(ref, rel=1e-10, abs=1e-14)
    assert np.all(per_example_kl(torch.tensor(p_logits), torch.tensor(p_logits)).numpy() == 0)


def test_top_and_random_baseline():
    W = np.array([[0.1, 3.0], [0.5, 1.0], [0.5, 2.0], [0.2, 0.0]])
    assert top_indices(W[:, [0]], 3)[0].tolist() == [1, 2, 3]  # ties by the lower index
    assert top_indices(W[:, [1]], 10)[0].tolist() == [0, 2, 1, 3]
    b = random_baseline(1000, 100, seed=5)
    assert len(b) == 100 and len(np.unique(b)) == 100 and np.all(np.diff(b) > 0)
    assert not np.array_equal(b, np.arange(100))  # not the first N
    assert np.array_equal(b, random_baseline(1000, 100, seed=5))
    assert not np.array_equal(b, random_baseline(1000, 100, seed=6))
    assert np.array_equal(random_baseline(30, 100, seed=0), np.arange(30))


def test_example_cache_subsets_with_variable_length_batches():
    # dynamic padding: each batch has its own sequence length; subsets must keep rows intact
    batches, rows = [], []
    rng = np.random.default_rng(0)
    for b, length in [(3, 4), (4, 6), (2, 6), (5, 3)]:
        ids = torch.as_tensor(rng.integers(1, 50, (b, length)))
        batches.append({"input_ids": ids, "labels": torch.arange(b), "tag": "t"})
        rows += [r for r in ids]
    cache = ExampleCache(batches, n_examples=13)
    assert cache.n == 13
    idx = np.array([0, 2, 3, 6, 7, 8, 12])
    got = []
    for batch in cache.batches(idx, batch_size=3):
        assert batch["input_ids"].shape[0] <= 3
        got += [r for r in batch["input_ids"]]
    assert len(got) == len(idx)
    for g, i in zip(got, idx):
        assert torch.equal(g, rows[i])
    with pytest.raises(ValueError, match="coefficients have 20 rows"):
        ExampleCache(batches, n_examples=20)


def _evaluator(n=40, r=4, settings=None, seed=0):
    torch.manual_seed(seed)
    model = CountingMLP()
    model.eval()
    x, y = _data(n)
    cache = ExampleCache(_loader(x, y), n_examples=n)
    layout = ParameterLayout.from_named_tensors(model.named_parameters())
    rng = np.random.default_rng(seed)
    W = rng.random((n, r))
    norms = rng.random(n) + 0.5
    ev = PerturbationEvaluator(
        model,
        cache,
        layout,
        W,
        norms,
        settings or EvalSettings(n_top=6, n_baseline=15, seed=1, batch_size=8),
        forward=fwd,
        progress=False,
    )
    return ev, model, x, y, layout, W, norms


def test_evaluate_matches_manual_perturbation():
    ev, model, x, y, layout, W, norms = _evaluator()
    rng = np.random.default_rng(7)
    m = layout.n_parameters
    cols = np.sort(rng.choice(m, 30, replace=False))
    G = rng.normal(size=(4, 30))
    dec = Decomposition(kind="lrm", W=W, new_to_old_col_indices=cols, n_parameters=m, G=G)
    state = {k: v.clone() for k, v in model.state_dict().items()}
    res = perturb_lrm(ev, dec, components=[2, 0], magnitude=0.5, tau=0.35, progress=False)
    assert res.component_indices.tolist() == [2, 0]

    # manual: a fresh copy of the network, θ ± 0.5·v put on by hand, explicit KL sums
    with torch.no_grad():
        orig = model.net(x).double()
    for row, j in enumerate([2, 0]):
        v = lrm_direction(G, cols, layout, j, 0.35).named()
        top = np.argsort(-W[:, j], kind="stable")[:6]
        base = ev.baseline
        ratios = []
        for s_i, sign in enumerate([1, -1]):
            net = nn.Sequential(nn.Linear(5, 8), nn.Tanh(), nn.Linear(8, 3))
            net.load_state_dict({k[4:]: t for k, t in state.items()})
            with torch.no_grad():
                for name, p in net.named_parameters():
                    p.add_(sign * 0.5 * v["net." + name])
                new = net(x).double()
            p_ = torch.softmax(orig, -1)
            q_ = torch.softmax(new, -1)
            kl = (p_ * (p_.log() - q_.log())).sum(-1).numpy()
            klr = (q_ * (q_.log() - p_.log())).sum(-1).numpy()
            acc = (new.argmax(-1) == y).double().numpy()
            assert res.kl_top[row, s_i] == pytest.approx(kl[top].mean(), rel=1e-4)
            assert res.kl_baseline[row, s_i] == pytest.approx(kl[base].mean(), rel=1e-4)
            assert res.kl_top_reverse[row, s_i] == pytest.approx(klr[top].mean(), rel=1e-4)
            assert res.kl_baseline_reverse[row, s_i] == pytest.approx(klr[base].mean(), rel=1e-4)
            assert res.acc_top_after[row, s_i] == pytest.approx(acc[top].mean())
            assert res.acc_baseline_after[row, s_i] == pytest.approx(acc[base].mean())
            assert res.acc_all_after[row, s_i] == pytest.approx(acc.mean())
            ratios.append(kl[top].mean() / kl[base].mean())
        best = int(np.argmax(ratios))
        assert res.kl_ratio[row] == pytest.approx(ratios[best], rel=1e-4)
        assert res.best_sign[row] == (1 if best == 0 else -1)
        assert res.pef_norm_ratio[row] == pytest.approx(norms[top].mean() / norms[base].mean())
        assert res.top_indices[row].tolist() == top.tolist()
        before = (orig.argmax(-1) == y).double().numpy()
        assert res.acc_top_before[row] == pytest.approx(before[top].mean())
        assert res.acc_baseline_before[row] == pytest.approx(before[base].mean())
    assert res.acc_all_before == pytest.approx((orig.argmax(-1) == y).double().mean().item())
    # the model ends exactly where it started
    for k, t in model.state_dict().items():
        assert torch.equal(t, state[k])


def test_model_runs_unperturbed_once_and_subset_mode_agrees():
    n, bs = 40, 8
    ev, model, x, y, layout, W, norms = _evaluator(n=n)
    # construction: one pass over all n examples for the unperturbed logits (loader batches of 7),
    # plus the prefix cache's probe of 4 rows (all parameters are perturbed: nothing is cached)
    assert model.calls == math.ceil(n / 7) + 1 and model.rows == n + 4
    assert ev.prefix is None
    rng = np.random.default_rng(0)
    cols = np.arange(layout.n_parameters)
    G = rng.normal(size=(4, layout.n_parameters))
    dec = Decomposition(kind="lrm", W=W, new_to_old_col_indices=cols, n_parameters=len(cols), G=G)
    model.calls = model.rows = 0
    res_all = perturb_lrm(ev, dec, magnitude=0.3, progress=False)
    # per component and sign: one pass over all n examples, never the unperturbed model again
    assert model.rows == 4 * 2 * n

    sub = EvalSettings(n_top=6, n_baseline=15, seed=1, batch_size=bs, eval_all=False)
    ev2, model2, *_ = _evaluator(n=n, settings=sub)
    model2.calls = model2.rows = 0
    res_sub = perturb_lrm(ev2, dec, magnitude=0.3, progress=False)
    union = [len(np.union1d(res_sub.top_indices[c], ev2.baseline)) for c in range(4)]
    assert model2.rows == 2 * sum(union)
    assert model2.calls <= 2 * sum(math.ceil(u / bs) for u in union) + 8  # re-grouped rows
    np.testing.assert_allclose(res_sub.kl_top, res_all.kl_top, rtol=1e-5)
    np.testing.assert_allclose(res_sub.kl_baseline, res_all.kl_baseline, rtol=1e-5)
    np.testing.assert_allclose(res_sub.acc_top_after, res_all.acc_top_after)
    assert np.all(np.isnan(res_sub.acc_all_after))


def test_mismatched_rows_are_rejected():
    model = CountingMLP()
    x, y = _data(10)
    cache = ExampleCache(_loader(x, y), n_examples=10)
    layout = ParameterLayout.from_named_tensors(model.named_parameters())
    with pytest.raises(ValueError, match="same examples"):
        PerturbationEvaluator(model, cache, layout, np.ones((9, 2)), np.ones(10), forward=fwd)


def test_summary_medians():
    kl = np.array([4.0, 1.0, 8.0, np.nan])
    pn = np.array([1.0, 2.0, 1.5, 1.0])
    s = summary_medians(kl, pn)
    assert s["kl_ratio_median"] == 4.0
    assert s["pef_norm_ratio_median"] == 1.5
    assert s["frac_kl_ratio_above_norm_ratio"] == pytest.approx(2 / 3)
    assert s["n_components_scored"] == 3


def test_no_components_gives_an_empty_result_that_saves(tmp_path):
    from npeff.artifacts.perturbation import load_perturbation, save_perturbation
    from npeff.perturb.flawed import accuracy_changes

    ev, model, x, y, layout, W, norms = _evaluator()
    m = layout.n_parameters
    dec = Decomposition(
        kind="lrm",
        W=W,
        new_to_old_col_indices=np.arange(m),
        n_parameters=m,
        G=np.random.default_rng(0).normal(size=(4, m)),
    )
    res = perturb_lrm(ev, dec, components=[], progress=False)
    assert res.n_components == 0 and res.top_indices.shape == (0, 6)
    back = load_perturbation(save_perturbation(res, tmp_path / "e.h5"))
    assert back.n_components == 0
    assert accuracy_changes(back)["n_raising_accuracy"] == 0
    assert np.isnan(summary_medians(back.kl_ratio, back.pef_norm_ratio)["kl_ratio_median"])
