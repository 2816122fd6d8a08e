"""D-NPEFF reports the KL-targeted sign's ratio (the other sign only as a diagnostic), LRM the
better of ±; components with an all-zero G/H row are skipped with a reason, the others perturbed,
and the skip is shown in the report."""

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader

from npeff.artifacts.decomposition import Decomposition
from npeff.artifacts.layout import ParameterLayout
from npeff.perturb.components import perturb_diag, perturb_lrm
from npeff.perturb.evaluation import EvalSettings, PerturbationEvaluator
from npeff.perturb.examples import ExampleCache
from npeff.perturb.metrics import safe_ratio
from npeff.perturb.summary import summarize
from npeff.perturb.targeting import KlTargetSettings
from npeff.report import prepare_report
from npeff.report.html import render

N, D, R = 60, 6, 6


def toy(seed=0):
    torch.manual_seed(seed)
    model = nn.Sequential(nn.Linear(D, 10), nn.Tanh(), nn.Linear(10, 3)).eval()
    x, y = torch.randn(N, D), torch.randint(0, 3, (N,))
    loader = DataLoader([{"x": x[i], "labels": y[i]} for i in range(N)], batch_size=16)
    layout = ParameterLayout.from_named_tensors(model.named_parameters())
    rng = np.random.default_rng(seed)
    W = rng.random((N, R))
    ev = PerturbationEvaluator(
        model,
        ExampleCache(loader, n_examples=N),
        layout,
        W,
        np.ones(N),
        EvalSettings(n_top=10, n_baseline=30, batch_size=16),
        forward=lambda mod, b: mod(b["x"]),
        progress=False,
    )
    return ev, layout.n_parameters, W, rng


def diag_dec(W, m, rng, zero_row=None):
    cols = np.sort(rng.choice(m, 80, replace=False))
    H = np.abs(rng.normal(size=(R, 80))) * (rng.random((R, 80)) < 0.5)
    if zero_row is not None:
        H[zero_row] = 0.0
    return Decomposition(kind="diag", W=W, new_to_old_col_indices=cols, n_parameters=m, H=H)


KL = KlTargetSettings(min_kl=0.02, max_kl=0.03, delta_range=(1e-3, 3.0))


def test_d_npeff_reports_the_targeted_sign_even_when_the_other_is_larger():
    ev, m, W, rng = toy()
    dec = diag_dec(W, m, rng)
    fisher = np.abs(rng.normal(size=m)) ** 2
    res = perturb_diag(ev, dec, fisher, kl_settings=KL, fisher_floor=1e-4, progress=False)
    both = safe_ratio(res.kl_top, res.kl_baseline)
    untargeted_larger = both[:, 1] > both[:, 0]
    assert untargeted_larger.any(), "the setup must contain a component where − scores higher"
    np.testing.assert_array_equal(res.kl_ratio, both[:, 0])  # the targeted (+) sign
    assert np.all(res.best_sign == 1)
    assert res.metadata["sign_policy"] == "targeted"
    np.testing.assert_array_equal(res.metadata["kl_ratio_untargeted"], both[:, 1])
    # the targeted sign is the one whose top KL is inside the target range
    assert np.all((res.kl_top[:, 0] >= KL.min_kl) & (res.kl_top[:, 0] <= KL.max_kl))
    summary = summarize(res)
    c = int(np.flatnonzero(untargeted_larger)[0])
    assert summary["components"][c]["kl_ratio"] == both[c, 0]
    assert summary["components"][c]["kl_ratio_untargeted"] == both[c, 1]
    assert summary["kl_ratio_median"] == np.median(both[:, 0])


def test_lrm_keeps_the_better_of_both_signs():
    ev, m, W, rng = toy(1)
    cols = np.arange(m)
    G = rng.normal(size=(R, m))
    dec = Decomposition(kind="lrm", W=W, new_to_old_col_indices=cols, n_parameters=m, G=G)
    res = perturb_lrm(ev, dec, magnitude=0.5, tau=None, progress=False)
    both = safe_ratio(res.kl_top, res.kl_baseline)
    np.testing.assert_array_equal(res.kl_ratio, both.max(axis=1))
    assert res.metadata["sign_policy"] == "best" and "kl_ratio_untargeted" not in res.metadata


def test_lrm_zero_component_is_skipped_and_reported():
    ev, m, W, rng = toy(2)
    G = rng.normal(size=(R, m))
    G[3] = 0.0
    dec = Decomposition(kind="lrm", W=W, new_to_old_col_indices=np.arange(m), n_parameters=m, G=G)
    res = perturb_lrm(ev, dec, magnitude=0.5, tau=0.35, progress=False)
    assert res.component_indices.tolist() == [0, 1, 2, 4, 5]
    assert np.all(np.isfinite(res.kl_ratio))
    (skip,) = res.metadata["skipped_components"]
    assert skip["component"] == 3 and "all-zero G row" in skip["reason"]
    # the zero row rejects nothing: component 0's direction is the same as without row 3
    full = perturb_lrm(ev, dataclass_without(dec, 3), magnitude=0.5, tau=0.35, progress=False)
    np.testing.assert_allclose(res.kl_top[0], full.kl_top[0], rtol=1e-6)
    html = render(prepare_report(dec, perturbation=res))
    assert "skipped_components" in html and "not perturbed: component 3 has an all-zero G" in html
    assert summarize(res)["skipped_components"][0]["component"] == 3


def dataclass_without(dec, j):
    import dataclasses

    keep = [k for k in range(dec.n_components) if k != j]
    return dataclasses.replace(dec, W=dec.W[:, keep], G=dec.G[keep])


def test_d_npeff_zero_component_is_skipped_and_reported():
    ev, m, W, rng = toy()
    dec = diag_dec(W, m, rng, zero_row=1)
    fisher = np.abs(rng.normal(size=m)) ** 2
    res = perturb_diag(ev, dec, fisher, kl_settings=KL, fisher_floor=1e-4, progress=False)
    assert res.component_indices.tolist() == [0, 2, 3, 4, 5]
    reasons = {s["component"]: s["reason"] for s in res.metadata["skipped_components"]}
    assert list(reasons) == [1] and "all-zero H row" in reasons[1]
    html = render(prepare_report(dec, perturbation=res))
    assert "not perturbed: component 1 has an all-zero H row" in html
