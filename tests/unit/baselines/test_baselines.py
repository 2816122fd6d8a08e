"""Baselines against independent references: scikit-learn k-means, planted sparse features,
planted gradient clusters, planted TCAV concepts, dense autograd gradients."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader

from npeff.analysis.matching import average_max_cosine
from npeff.analysis.top_examples import top_indices
from npeff.baselines.kmeans import KMeansFit, fit_kmeans
from npeff.baselines.sae import fit_sae
from npeff.baselines.tcav import feature_gradients, fit_cavs, tcav_test
from npeff.tasks.base import DictDataset


def _blobs(rng, n_per, centers, scale=0.3):
    truth = np.repeat(np.arange(len(centers)), n_per)
    return rng.normal(scale=scale, size=(truth.size, centers.shape[1])) + centers[truth], truth


# --- k-means ------------------------------------------------------------------------------------
def test_kmeans_equals_sklearn_and_ranks_by_distance():
    from sklearn.cluster import KMeans

    rng = np.random.default_rng(0)
    centers = rng.normal(scale=3, size=(5, 6))
    X_fit, _ = _blobs(rng, 40, centers)
    X_eval, _ = _blobs(rng, 30, centers)
    ours = fit_kmeans(X_fit, 5, seed=3, n_init=2)
    ref = KMeans(n_clusters=5, random_state=3, n_init=2).fit(X_fit)
    np.testing.assert_allclose(ours.model.cluster_centers_, ref.cluster_centers_)
    assign, scores, member = ours.apply(X_eval)
    np.testing.assert_array_equal(assign, ref.predict(X_eval))
    np.testing.assert_array_equal(member.argmax(axis=1), assign)
    assert (scores >= 0).all() and ((scores > 0) == (member > 0)).all()
    # Within a cluster, descending score = ascending distance to the reference centroid.
    dist = np.linalg.norm(X_eval[:, None] - ref.cluster_centers_[None], axis=2)
    top = top_indices(scores, 200)
    for j in range(5):
        members = np.flatnonzero(assign == j)
        np.testing.assert_array_equal(top[j][: members.size], members[np.argsort(dist[members, j])])


def test_more_clusters_than_examples_is_an_error():
    with pytest.raises(ValueError, match="only 4 examples"):
        fit_kmeans(np.zeros((4, 2)), 5)
    assert isinstance(fit_kmeans(np.eye(4), 4), KMeansFit)


# --- sparse autoencoder ---------------------------------------------------------------------------
def _planted_sparse(rng, n, d=20, F=8, active=2):
    D = rng.normal(size=(F, d))
    D /= np.linalg.norm(D, axis=1, keepdims=True)
    S = np.zeros((n, F))
    for i in range(n):
        S[i, rng.choice(F, active, replace=False)] = rng.uniform(1.0, 3.0, active)
    return S @ D + 0.01 * rng.normal(size=(n, d)), D


@pytest.mark.parametrize("kind, n, epochs, l1", [("topk", 1500, 20, 0.0), ("l1", 1000, 15, 3e-2)])
def test_sae_loss_decreases_and_recovers_planted_features(kind, n, epochs, l1):
    rng = np.random.default_rng(0)
    X, D = _planted_sparse(rng, n=n)  # 8 planted directions, 2 active per example
    fit = fit_sae(X, 16, kind=kind, k=2, l1=l1, epochs=epochs, batch_size=64, lr=1e-2, seed=0)
    assert fit.losses[-1] < 0.5 * fit.losses[0]
    # The decoder lives in the scaled space x / s: directions are unchanged, so every planted
    # direction must appear among the (twice as many) decoder rows.
    cos = np.abs(D @ fit.decoder.T)  # [planted, learned]
    assert cos.max(axis=1).min() >= 0.9, cos.max(axis=1)
    codes = fit.transform(X[:50])
    assert codes.shape == (50, 16) and (codes >= 0).all()
    if kind == "topk":
        assert ((codes > 0).sum(axis=1) <= 2).all()


# --- gradient clustering -----------------------------------------------------------------------
def _linear_model_and_loader(rng, n_per=30, d=8, C=3):
    torch.manual_seed(0)
    from npeff.models.simple import MLP

    model = MLP(C, d, hidden_sizes=()).eval()
    centers = 3.0 * rng.normal(size=(C, d))
    X, truth = _blobs(rng, n_per, centers, scale=0.2)
    ds = DictDataset(
        {"x": torch.tensor(X, dtype=torch.float32), "labels": torch.tensor(truth, dtype=torch.long)}
    )
    return model, DataLoader(ds, batch_size=16), X, truth


def _dense_normalized_grads(model, X):
    out = []
    for x in torch.tensor(X, dtype=torch.float32):
        model.zero_grad()
        logp = torch.log_softmax(model(x=x[None]), -1)[0]
        logp[logp.argmax()].backward()
        g = torch.cat([p.grad.reshape(-1) for p in model.parameters()])
        out.append((g / g.norm()).numpy())
    return np.asarray(out)


def test_gradient_features_match_dense_autograd(tmp_path):
    from npeff.artifacts.pefs import load_pefs
    from npeff.baselines.gradients import compute_gradients, gradient_features

    rng = np.random.default_rng(1)
    model, loader, X, _ = _linear_model_and_loader(rng)
    dense = _dense_normalized_grads(model, X)  # [n, m], m = 3·8 + 3
    full = gradient_features(
        load_pefs(compute_gradients(model, loader, tmp_path / "a.h5", 10**6, progress=False))
    )
    np.testing.assert_allclose(full.toarray(), dense, atol=1e-5)
    k = 5
    top = gradient_features(
        load_pefs(compute_gradients(model, loader, tmp_path / "b.h5", k, progress=False))
    )
    want = np.zeros_like(dense)
    for i, row in enumerate(dense):
        keep = np.argsort(-np.abs(row))[:k]
        want[i, keep] = row[keep] / np.linalg.norm(row[keep])
    np.testing.assert_allclose(top.toarray(), want, atol=1e-5)


def test_gradient_kmeans_recovers_planted_gradient_clusters(tmp_path):
    from npeff.artifacts.pefs import load_pefs
    from npeff.baselines.gradients import compute_gradients, gradient_features

    rng = np.random.default_rng(2)
    model, loader, _, truth = _linear_model_and_loader(rng)
    feats = gradient_features(
        load_pefs(compute_gradients(model, loader, tmp_path / "g.h5", 12, progress=False))
    )
    assign, _, member = fit_kmeans(feats, 3, seed=0).apply(feats)
    planted = np.eye(3)[truth]
    a2b, b2a = average_max_cosine(member, planted)
    assert a2b == pytest.approx(1.0) and b2a == pytest.approx(1.0)


# --- TCAV ----------------------------------------------------------------------------------------
def _planted_tcav_model(d=6):
    from npeff.models.simple import MLP

    torch.manual_seed(0)
    model = MLP(2, d, hidden_sizes=(d,)).eval()
    u = torch.zeros(d)
    u[0] = 1.0
    with torch.no_grad():
        model.net[0].weight.copy_(torch.eye(d))
        model.net[0].bias.zero_()
        model.net[2].weight.copy_(torch.stack([-u, u]))  # logit_1 − logit_0 = 2 u·h
        model.net[2].bias.zero_()
    return model


def test_tcav_planted_concept_significant_random_not():
    rng = np.random.default_rng(0)
    d, n = 6, 300
    X = np.abs(rng.normal(size=(n, d))) + 0.1  # positive: the ReLU is the identity
    labels = (X[:, 0] > np.median(X[:, 0])).astype(np.int64)
    model = _planted_tcav_model(d)
    ds = DictDataset({"x": torch.tensor(X, dtype=torch.float32), "labels": torch.tensor(labels)})
    feats, grads, lab = feature_gradients(model, DataLoader(ds, batch_size=64), "net.1")
    np.testing.assert_allclose(feats, X, atol=1e-6)
    # ∇_h logit_c is row c of the last layer, for every example (independent reference).
    W = model.net[2].weight.detach().numpy()
    np.testing.assert_allclose(grads, np.broadcast_to(W, grads.shape), atol=1e-6)
    planted = np.argsort(-X[:, 0])[:20]  # examples high along u: the concept raises logit_1
    random_ = rng.choice(n, 20, replace=False)
    res = tcav_test(feats, grads, lab, [planted, random_], n_random=20, alpha=0.05, seed=0)
    assert res.significant.tolist() == [True, False], res.p_values
    assert res.scores[0, 1].mean() == pytest.approx(1.0)  # every class-1 example moves up


def test_fit_cavs_matches_sklearn_direction():
    from sklearn.linear_model import LogisticRegression

    rng = np.random.default_rng(0)
    pos = rng.normal(size=(3, 30, 5)) + np.array([1.0, 0, 0, 0, 0])
    neg = rng.normal(size=(3, 30, 5))
    V = fit_cavs(pos, neg, l2=1e-2)
    both = np.concatenate([pos, neg], axis=1)
    centred = both - both.mean(axis=1, keepdims=True)
    s = np.sqrt((centred**2).sum(axis=2).mean())  # fit_cavs' one global scale
    y = np.r_[np.ones(30), np.zeros(30)]
    for p in range(3):
        # sklearn minimizes C·Σ loss + ½‖w‖², ours mean loss + (l2/2)‖w‖²: C = 1/(n·l2).
        ref = LogisticRegression(C=1 / (60 * 1e-2), tol=1e-10, max_iter=10_000).fit(
            centred[p] / s, y
        )
        w = ref.coef_[0] / np.linalg.norm(ref.coef_[0])
        assert float(w @ V[p]) > 0.999


# --- activation capture ---------------------------------------------------------------------------
def test_reduce_output_mask_aware_mean_and_delta():
    from npeff.baselines.capture import expand_delta, reduce_output

    out = torch.randn(2, 4, 3)
    mask = torch.tensor([[1, 1, 0, 0], [1, 1, 1, 1]])
    mean = reduce_output(out, mask, "mean")
    torch.testing.assert_close(mean[0], out[0, :2].mean(0))
    torch.testing.assert_close(mean[1], out[1].mean(0))
    torch.testing.assert_close(reduce_output(out, mask, 0), out[:, 0])
    delta = torch.randn(2, 3)
    for token in ("mean", 0, -1):
        moved = reduce_output(expand_delta(out, delta, mask, token), mask, token)
        torch.testing.assert_close(moved, reduce_output(out, mask, token) + delta)
