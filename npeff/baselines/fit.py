"""One entry point per baseline method: fit on the fit split, score both splits."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np


def fit_baseline(name: str, feats: Mapping[str, Any], cfg: Mapping[str, Any]):
    """Fit baseline ``name`` (one of :data:`~npeff.baselines.BASELINES`) on the fit split's
    features and score both splits: (its ``BaselineResult``, method-specific metrics).

    ``feats[split]``: (X ``[n, d]`` features, ..., the split's example indices ``[n]``) for
    ``"fit"`` and ``"eval"``; ``cfg``: the baseline settings (``n_components``, ``seed``,
    ``kmeans.{n_init, max_iter}``, ``sae.{kind, k, l1, epochs, batch_size, lr}``, ``progress``).
    Scores are ``[n, r]`` (k-means: closeness to the centroid; SAE: feature activations).
    """
    from npeff.artifacts.baseline import BaselineResult

    X_fit, X_eval = feats["fit"][0], feats["eval"][0]
    r = int(cfg["n_components"])
    seed = int(cfg["seed"])
    if name in ("kmeans", "gradient_kmeans"):
        from npeff.baselines.kmeans import fit_kmeans

        km = fit_kmeans(
            X_fit,
            r,
            seed=seed,
            n_init=int(cfg["kmeans"]["n_init"]),
            max_iter=int(cfg["kmeans"]["max_iter"]),
        )
        _, s_fit, _ = km.apply(X_fit)
        assign, s_eval, member = km.apply(X_eval)
        sizes = np.bincount(assign, minlength=r)
        extra = {
            "inertia_fit": float(km.model.inertia_),
            "n_empty_clusters_eval": int((sizes == 0).sum()),
            "largest_cluster_eval": int(sizes.max()),
        }
        return BaselineResult(name, s_fit, s_eval, feats["eval"][2], member), extra
    from npeff.baselines.sae import fit_sae

    sc = cfg["sae"]
    sae = fit_sae(
        X_fit,
        r,
        kind=str(sc["kind"]),
        k=int(sc["k"]),
        l1=float(sc["l1"]),
        epochs=int(sc["epochs"]),
        batch_size=int(sc["batch_size"]),
        lr=float(sc["lr"]),
        seed=seed,
        progress=bool(cfg.get("progress", True)),
    )
    s_fit, s_eval = sae.transform(X_fit), sae.transform(X_eval)
    extra = {
        "sae_kind": str(sc["kind"]),
        "sae_loss_first": sae.losses[0] if sae.losses else None,
        "sae_loss_final": sae.losses[-1] if sae.losses else None,
        "sae_reconstruction_final": sae.reconstruction[-1] if sae.reconstruction else None,
        "sae_dead_features_eval": int((s_eval.max(axis=0) <= 0).sum()),
        "sae_mean_active_eval": float((s_eval > 0).sum(axis=1).mean()),
    }
    return BaselineResult(name, s_fit, s_eval, feats["eval"][2]), extra
