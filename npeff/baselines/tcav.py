"""TCAV (Kim et al. 2018; paper §3.4 and appendix I) for components and clusters.

For a concept (the top examples of a component or cluster) and a layer's features h(x) [d]:
  1. a concept activation vector (CAV) v is the unit normal of a linear classifier (L2-regularized
     logistic regression) separating the concept's features from those of a random set of
     examples of the same size, drawn again for each of ``n_random`` repeats;
  2. the TCAV score of class c is the share of the class-c examples (true label) whose
     directional derivative ∇_h logit_c(x) · v is positive;
  3. the null distribution: the same with CAVs separating two random sets (one per repeat);
  4. the concept relates to class c when a two-sided t-test of its ``n_random`` scores against
     the null's rejects at ``alpha`` / C (Bonferroni over the C classes); a concept is
     *significant* when that holds for at least one class (the paper's criterion).
Gradients with respect to h are taken by adding a zero perturbation to the feature inside the
forward pass (``ModuleTap.delta``), once per example and class, and reused for every CAV.

Why not captum's ``TCAV``: it builds its CAVs from a layer's whole flattened output (for a
sequence model every token position including padding), cannot express "the CLS position" or a
mask-aware mean, and takes positional tensor inputs, while npeff models take a dict batch of
keyword tensors; it also writes every CAV to disk. The test here is the same statistic on exactly
the features the baselines cluster.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn
from tqdm.auto import tqdm

from npeff.baselines.capture import ModuleTap, Token
from npeff.errors import NpeffUserError
from npeff.models.core import LABELS_KEY


def feature_gradients(
    model: nn.Module, loader, module_name: str, token: Token = 0, progress: bool = False
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(features float32 [n, d], gradients float32 [n, C, d] of every class logit with respect to
    the features, labels int64 [n]) over ``loader``."""
    if model.training:
        raise NpeffUserError("the model is in training mode; call model.eval() first")
    tap = ModuleTap(model, module_name, token)
    feats, grads, labels = [], [], []
    with tap.attached():
        for batch in tqdm(loader, desc="TCAV gradients", disable=not progress):
            with torch.no_grad():
                h, _ = tap.forward(model, batch)
            tap.delta = torch.zeros_like(h, requires_grad=True)
            try:
                _, logits = tap.forward(model, batch)
                g = [
                    torch.autograd.grad(logits[:, c].sum(), tap.delta, retain_graph=True)[0]
                    for c in range(logits.shape[1])
                ]
            finally:
                tap.delta = None
            feats.append(h.float().numpy())
            grads.append(torch.stack(g, dim=1).float().numpy())
            labels.append(batch[LABELS_KEY].numpy())
    return np.concatenate(feats), np.concatenate(grads), np.concatenate(labels).astype(np.int64)


def fit_cavs(pos: np.ndarray, neg: np.ndarray, l2: float = 1e-2, n_iters: int = 25) -> np.ndarray:
    """Unit CAVs [P, d]: L2-regularized logistic regressions of ``pos`` [P, a, d] (label 1) against
    ``neg`` [P, b, d] (label 0), P problems solved at once by Newton's method (in float64, inputs
    centred per problem and scaled by one global constant, so directions are those of the raw
    feature space)."""
    pos, neg = np.asarray(pos, np.float64), np.asarray(neg, np.float64)
    P, _, d = pos.shape
    X = np.concatenate([pos, neg], axis=1)  # [P, n, d]
    y = np.concatenate([np.ones(pos.shape[:2]), np.zeros(neg.shape[:2])], axis=1)  # [P, n]
    X = X - X.mean(axis=1, keepdims=True)
    s = np.sqrt((X**2).sum(axis=2).mean()) or 1.0
    X = torch.as_tensor(X / s)
    y = torch.as_tensor(y)
    n = X.shape[1]
    out = np.empty((P, d))
    chunk = max(1, int(2e7 // (d * d + n * d)))
    eye = torch.eye(d + 1, dtype=torch.float64)
    reg = l2 * eye
    reg[d, d] = 1e-8  # the intercept is not penalized
    for lo in range(0, P, chunk):
        Xa = torch.cat([X[lo : lo + chunk], torch.ones(*X[lo : lo + chunk].shape[:2], 1)], dim=2)
        ya = y[lo : lo + chunk]
        w = torch.zeros(Xa.shape[0], d + 1, dtype=torch.float64)
        for _ in range(int(n_iters)):
            p = torch.sigmoid(torch.einsum("pnd,pd->pn", Xa, w))
            grad = torch.einsum("pnd,pn->pd", Xa, p - ya) / n + (reg @ w.T).T
            H = torch.einsum("pnd,pn,pne->pde", Xa, p * (1 - p), Xa) / n + reg
            w = w - torch.linalg.solve(H, grad)
        v = w[:, :d].numpy()
        out[lo : lo + chunk] = v / np.maximum(np.linalg.norm(v, axis=1, keepdims=True), 1e-12)
    return out


def tcav_scores(grads: np.ndarray, labels: np.ndarray, cavs: np.ndarray) -> np.ndarray:
    """float64 [C, P]: share of each class's examples with ∇logit_c · v_p > 0.

    grads [n, C, d], labels int [n], cavs [P, d]. A class with no examples scores NaN.
    """
    S = np.einsum("ncd,pd->ncp", grads, cavs) > 0  # [n, C, P]
    C = grads.shape[1]
    out = np.full((C, cavs.shape[0]), np.nan)
    for c in range(C):
        rows = labels == c
        if rows.any():
            out[c] = S[rows, c].mean(axis=0)
    return out


@dataclass
class TcavResult:
    """Per concept (q concepts, C classes, R repeats).

    scores: [q, C, R] concept TCAV scores. null_scores: [C, R] random-vs-random scores.
    p_values: [q, C] two-sided t-test p-values. significant: bool [q] (any class below alpha/C).
    """

    scores: np.ndarray
    null_scores: np.ndarray
    p_values: np.ndarray
    significant: np.ndarray
    alpha: float
    n_random: int

    @property
    def significant_share(self) -> float:
        return float(self.significant.mean()) if self.significant.size else float("nan")

    def summary(self) -> dict:
        return {
            "n_concepts": int(self.significant.size),
            "n_significant": int(self.significant.sum()),
            "significant_share": self.significant_share,
            "alpha": self.alpha,
            "bonferroni_classes": int(self.p_values.shape[1]) if self.p_values.ndim == 2 else 0,
            "n_random": self.n_random,
            "min_p_value": np.nanmin(self.p_values, axis=1).tolist() if self.p_values.size else [],
        }


def _random_sets(rng, pool: np.ndarray, size: int, count: int) -> np.ndarray:
    if pool.size < size:
        raise NpeffUserError(
            f"TCAV needs {size} random examples outside a concept but only {pool.size} remain; "
            "use fewer concept examples (tcav.n_concept_examples) or more examples"
        )
    return np.stack([rng.choice(pool, size=size, replace=False) for _ in range(count)])


def tcav_test(
    features: np.ndarray,
    grads: np.ndarray,
    labels: np.ndarray,
    concepts: list[np.ndarray],
    n_random: int = 20,
    alpha: float = 0.05,
    l2: float = 1e-2,
    seed: int = 0,
) -> TcavResult:
    """TCAV significance of each concept (an index array into the n examples); see the module doc.

    features [n, d], grads [n, C, d], labels int [n]. The random-vs-random null is computed once
    per concept size and shared by the concepts of that size.
    """
    from scipy import stats

    features = np.asarray(features, np.float64)
    n = features.shape[0]
    C = grads.shape[1]
    if n_random < 2:
        raise NpeffUserError(f"tcav.n_random must be >= 2 for a t-test, got {n_random}")
    rng = np.random.default_rng(seed)
    everyone = np.arange(n)
    nulls: dict[int, np.ndarray] = {}
    scores, pvals = [], []
    for idx in concepts:
        idx = np.unique(np.asarray(idx, dtype=np.int64))
        size = idx.size
        if size not in nulls:
            a = _random_sets(rng, everyone, size, n_random)
            b = np.stack(
                [
                    rng.choice(np.setdiff1d(everyone, a[r]), size, replace=False)
                    for r in range(n_random)
                ]
            )
            nulls[size] = tcav_scores(grads, labels, fit_cavs(features[a], features[b], l2))
        rand = _random_sets(rng, np.setdiff1d(everyone, idx), size, n_random)
        pos = np.broadcast_to(features[idx], (n_random, size, features.shape[1]))
        sc = tcav_scores(grads, labels, fit_cavs(pos, features[rand], l2))  # [C, R]
        null = nulls[size]
        p = np.ones(C)
        for c in range(C):
            if np.isnan(sc[c]).any() or np.isnan(null[c]).any():
                continue
            if np.ptp(sc[c]) == 0 and np.ptp(null[c]) == 0:
                p[c] = 1.0 if sc[c, 0] == null[c, 0] else 0.0
                continue
            with warnings.catch_warnings():  # near-constant score sets: precision notes only
                warnings.simplefilter("ignore", RuntimeWarning)
                res = stats.ttest_ind(sc[c], null[c], equal_var=False)
            p[c] = float(res.pvalue) if np.isfinite(res.pvalue) else 1.0
        scores.append(sc)
        pvals.append(p)
    scores_a = np.asarray(scores).reshape(len(concepts), C, n_random)
    p_a = np.asarray(pvals).reshape(len(concepts), C)
    null_first = next(iter(nulls.values())) if nulls else np.zeros((C, n_random))
    return TcavResult(
        scores=scores_a,
        null_scores=null_first,
        p_values=p_a,
        significant=(p_a < alpha / C).any(axis=1),
        alpha=float(alpha),
        n_random=int(n_random),
    )
