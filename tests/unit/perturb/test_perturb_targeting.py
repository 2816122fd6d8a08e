"""KL targeting: the search on monotone functions, and D-NPEFF directions on a toy model."""

import numpy as np
import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader

from npeff.artifacts.decomposition import Decomposition
from npeff.artifacts.layout import ParameterLayout
from npeff.perturb.components import perturb_diag
from npeff.perturb.evaluation import EvalSettings, PerturbationEvaluator
from npeff.perturb.examples import ExampleCache
from npeff.perturb.metrics import per_example_kl
from npeff.perturb.targeting import KlTargetSettings, target_kl


@pytest.mark.parametrize("seed", range(6))
@pytest.mark.parametrize("power", [1.0, 2.0, 4.0])
def test_target_kl_lands_in_range_on_monotone_functions(seed, power):
    calls = []

    def kl(delta, lam):
        calls.append((delta, lam))
        return (delta * lam / (1 - lam + 1e-3)) ** power

    s = KlTargetSettings(min_kl=0.01, max_kl=0.012, delta_range=(1e-4, 10.0), max_iters=40)
    res = target_kl(kl, s, np.random.default_rng(seed))
    assert res.found
    assert s.min_kl <= res.kl <= s.max_kl
    assert res.kl == pytest.approx(kl(res.delta, res.lam))
    assert s.delta_range[0] <= res.delta <= s.delta_range[1]
    assert s.lambda_range[0] <= res.lam <= s.lambda_range[1]
    assert res.n_evals == len(calls) - 1


def test_target_kl_reports_failure_when_range_unreachable():
    s = KlTargetSettings(min_kl=5.0, max_kl=6.0, delta_range=(1e-3, 1.0), max_iters=6)
    res = target_kl(lambda d, lam: d * lam, s, np.random.default_rng(0))
    assert not res.found and res.kl < 5.0


def test_first_move_is_lambda():
    seen = []

    def kl(delta, lam):
        seen.append((delta, lam))
        return 0.0 if len(seen) == 1 else 1.0

    s = KlTargetSettings(min_kl=0.5, max_kl=0.6, max_iters=1, max_backoffs=3)
    target_kl(kl, s, np.random.default_rng(0))
    (d0, l0), (d1, l1) = seen[0], seen[1]
    assert d1 == d0 and l1 == pytest.approx(l0 + (s.lambda_range[1] - l0) / 2)
    # overshoot → halve the step
    assert seen[2][1] == pytest.approx(l0 + (s.lambda_range[1] - l0) / 4)


def test_d_npeff_direction_hits_the_kl_target_on_a_toy_model():
    torch.manual_seed(0)
    n, d = 60, 6
    model = nn.Sequential(nn.Linear(d, 10), nn.Tanh(), nn.Linear(10, 3)).eval()
    x = torch.randn(n, d)
    y = torch.randint(0, 3, (n,))
    loader = DataLoader([{"x": x[i], "labels": y[i]} for i in range(n)], batch_size=16)

    def fwd(mod, batch):
        return mod(batch["x"])

    layout = ParameterLayout.from_named_tensors(model.named_parameters())
    m = layout.n_parameters
    rng = np.random.default_rng(0)
    r = 3
    cols = np.sort(rng.choice(m, 80, replace=False))
    H = np.abs(rng.normal(size=(r, 80))) * (rng.random((r, 80)) < 0.5)
    W = rng.random((n, r))
    dec = Decomposition(kind="diag", W=W, new_to_old_col_indices=cols, n_parameters=m, H=H)
    fisher = np.abs(rng.normal(size=m)) ** 2
    cache = ExampleCache(loader, n_examples=n)
    ev = PerturbationEvaluator(
        model,
        cache,
        layout,
        W,
        np.ones(n),
        EvalSettings(n_top=10, n_baseline=30, batch_size=16),
        forward=fwd,
        progress=False,
    )
    kls = KlTargetSettings(min_kl=0.02, max_kl=0.03, delta_range=(1e-3, 3.0))
    state = {k: v.clone() for k, v in model.state_dict().items()}
    res = perturb_diag(ev, dec, fisher, kl_settings=kls, fisher_floor=1e-4, seed=0, progress=False)
    assert res.component_indices.tolist() == [0, 1, 2]
    assert np.isnan(res.magnitude)
    for c in range(3):
        # the + sign is the targeted merge: its top KL is inside the target range
        assert kls.min_kl <= res.kl_top[c, 0] <= kls.max_kl
        info = res.metadata["component_extra"][c]
        assert info["kl_target_found"] and kls.min_kl <= info["target_kl"] <= kls.max_kl
        # the perturbation lives on the component's support only
    for k, t in model.state_dict().items():
        assert torch.equal(t, state[k])

    # re-check one component by hand: put θ' on a copy and compute the KL explicitly
    from npeff.perturb.directions import d_merge_delta, loss_gradient_sign, unit_dataset_fisher

    info = res.metadata["component_extra"][1]
    h = np.zeros(m)
    h[cols] = H[1] / np.linalg.norm(H[1])
    top = res.top_indices[1]
    net = nn.Sequential(nn.Linear(d, 10), nn.Tanh(), nn.Linear(10, 3))
    net.load_state_dict(state)
    model.zero_grad()
    torch.nn.functional.cross_entropy(net(x[top]), y[top], reduction="sum").backward()
    s = torch.cat([p.grad.reshape(-1) for p in net.parameters()]).sign().numpy()
    assert np.array_equal(
        s,
        loss_gradient_sign(model, ev.gradient_batches(top), ev.perturber.params, layout, fwd),
    )
    delta = d_merge_delta(h, unit_dataset_fisher(fisher), s, info["delta"], info["lambda"], 1e-4)
    assert np.all(delta[np.setdiff1d(np.arange(m), cols)] == 0)
    with torch.no_grad():
        orig = net(x[top])
        off = 0
        for p in net.parameters():
            k = p.numel()
            p.add_(torch.as_tensor(delta[off : off + k], dtype=torch.float32).view_as(p))
            off += k
        kl = per_example_kl(orig, net(x[top])).mean().item()
    assert kl == pytest.approx(res.kl_top[1, 0], rel=1e-4)


def test_diag_rejects_wrong_inputs():
    model = nn.Linear(2, 3)
    layout = ParameterLayout.from_named_tensors(model.named_parameters())
    loader = [{"x": torch.randn(4, 2), "labels": torch.zeros(4, dtype=torch.long)}]
    ev = PerturbationEvaluator(
        model,
        ExampleCache(loader),
        layout,
        np.ones((4, 1)),
        np.ones(4),
        forward=lambda mod, b: mod(b["x"]),
        progress=False,
    )
    lrm = Decomposition(
        kind="lrm",
        W=np.ones((4, 1)),
        new_to_old_col_indices=np.arange(9),
        n_parameters=9,
        G=np.ones((1, 9)),
    )
    with pytest.raises(ValueError, match="perturb=lrm"):
        perturb_diag(ev, lrm, np.ones(9))
    dd = Decomposition(
        kind="diag",
        W=np.ones((4, 1)),
        new_to_old_col_indices=np.arange(9),
        n_parameters=9,
        H=np.ones((1, 9)),
    )
    with pytest.raises(ValueError, match="dataset Fisher has 5"):
        perturb_diag(ev, dd, np.ones(5))
