"""NPEFF vs COAR on one model (seed-systems.md §4.4): the comparison of an NPEFF run's components
with COAR attributions and with real unit ablations, as one function (:func:`compare_with_npeff`).

For each compared component j (on the examples both cover):

1. its mass share on every unit (:func:`~npeff.coar.compare.unit_shares`); S_j = the
   ``top_units`` units with the largest share;
2. the effect of ablating S_j on every example's correct-class margin, as COAR predicts it and as
   it really is (batched ablations), and the true effect of ``n_random`` random unit sets of the
   same size;
3. Spearman ρ / top-k Jaccard of coefficients vs |effect| (:func:`~npeff.coar.compare.agreement`),
   COAR's Pearson r of predicted vs true effect, and — with a perturbation result — the Spearman ρ
   of the NPEFF perturbation's per-example KL with |effect| and with the ablation's KL.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from typing import Any

import numpy as np
import torch

from npeff.errors import NpeffUserError

# Per-component statistics averaged into the summary (nan-ignoring).
STATS = (
    "spearman_coar",
    "spearman_true",
    "spearman_random",
    "jaccard_coar",
    "jaccard_true",
    "jaccard_random",
    "pearson_coar_vs_true",
    "kl_spearman_true",
    "kl_spearman_random",
    "spearman_true_kl",
    "spearman_random_kl",
    "kl_spearman_ablation_kl",
    "kl_spearman_ablation_kl_random",
    "share_top_units",
    "share_all_units",
)


def spearman(a: np.ndarray, b: np.ndarray) -> float:
    """Spearman ρ of two ``[n]`` vectors; NaN when either is constant."""
    from scipy.stats import spearmanr

    if np.ptp(a) == 0 or np.ptp(b) == 0:
        return float("nan")
    return float(spearmanr(a, b).statistic)


def pearson(a: np.ndarray, b: np.ndarray) -> float:
    """Pearson r of two ``[n]`` vectors; NaN when either is constant."""
    if np.std(a) == 0 or np.std(b) == 0:
        return float("nan")
    return float(np.corrcoef(a, b)[0, 1])


def perturbation_vectors(evaluator, dec, res, components, dataset_fisher):
    """Per perturbed component j of ``components``: (ParameterVector, scale) of the perturbation
    the perturbation result ``res`` reports (LRM: the G direction at ``res.magnitude`` × sign;
    D-NPEFF: the Fisher-merge vector at the stored δ/λ, needs ``dataset_fisher`` ``[m]``)."""
    from npeff.perturb.components import diag_merge
    from npeff.perturb.directions import lrm_direction, normalize_rows, unit_dataset_fisher

    layout = evaluator.layout
    where = {int(j): c for c, j in enumerate(res.component_indices)}
    out = {}
    if dec.kind == "lrm":
        tau = res.metadata.get("tau", (res.metadata.get("config") or {}).get("tau"))
        g_unit = normalize_rows(dec.G)
        for j in components:
            if j in where:
                c = where[j]
                v = lrm_direction(dec.G, dec.new_to_old_col_indices, layout, j, tau, g_unit)
                out[j] = (v, float(res.magnitude) * int(res.best_sign[c]))
        return out
    if dataset_fisher is None:
        return out
    fisher_unit = unit_dataset_fisher(dataset_fisher)
    floor = float(res.metadata.get("fisher_floor", 1e-6))
    extras = res.metadata.get("component_extra") or [{}] * res.n_components
    for j in components:
        if j not in where:
            continue
        c = where[j]
        info = extras[c]
        if "delta" not in info:
            continue
        top = np.asarray(res.top_indices[c], dtype=np.int64)
        vector = diag_merge(evaluator, dec, j, fisher_unit, floor, top)
        out[j] = (vector(info["delta"], info["lambda"]), float(res.best_sign[c]))
    return out


def compare_with_npeff(
    *,
    model,
    cache,
    dec,
    pefs,
    att,
    rows_w: np.ndarray,
    rows_a: np.ndarray,
    settings: Mapping[str, Any],
    perturbation=None,
    dataset_fisher: np.ndarray | None = None,
    progress: bool = True,
) -> dict:
    """The statistics (see the module docstring) as a JSON-ready dict.

    ``cache``: the examples of W's rows in order (:class:`~npeff.perturb.examples.ExampleCache`);
    ``rows_w`` / ``rows_a``: rows of W / of the attributions of the compared examples (aligned).
    """
    from npeff.coar import compare as stats
    from npeff.coar.ablation import AblationEngine, margin
    from npeff.models.core import LABELS_KEY, forward_logits
    from npeff.perturb.evaluation import EvalSettings, PerturbationEvaluator

    s = settings
    layout = dec.layout or pefs.layout
    units = att.units
    k = int(s["top_units"])
    if not 1 <= k <= units.n_units:
        raise NpeffUserError(
            f"compare_coar.top_units={k} must be in 1..{units.n_units} (the units)"
        )
    vectors = dec.G if dec.kind == "lrm" else dec.H
    shares = stats.unit_shares(vectors, layout, units, dec.kind, dec.new_to_old_col_indices)
    r = dec.n_components
    comps = list(range(r)) if s.get("components") is None else [int(j) for j in s["components"]]
    sets = stats.top_unit_sets(shares[comps], k)
    n_random = int(s["n_random"])
    rng_sets = [
        stats.random_unit_sets(units.n_units, [k] * len(comps), seed=int(s["seed"]) + 1 + i)
        for i in range(n_random)
    ]

    bs = int(s["batch_size"])
    batches = list(cache.batches(np.sort(rows_w), bs))
    order = np.argsort(rows_w)  # batches hold the rows in ascending order
    inv = np.empty_like(order)
    inv[order] = np.arange(len(order))
    engine = AblationEngine(
        model, units, method=str(s["method"]), masks_per_forward=int(s["masks_per_forward"])
    )
    with torch.no_grad():
        base = torch.cat([margin(forward_logits(model, b), b[LABELS_KEY]) for b in batches])
    t0 = time.perf_counter()
    all_sets = np.concatenate([sets, *rng_sets])
    effects, abl_kl = stats.true_effect_and_kl(engine, batches, all_sets)
    effects, abl_kl = effects[:, inv], abl_kl[:, inv]  # [(1 + n_random)·|comps|, n], rows_w order
    t_ablate = time.perf_counter() - t0
    true = effects[: len(comps)]
    rand = effects[len(comps) :].reshape(n_random, len(comps), -1)
    true_kl = abl_kl[: len(comps)]
    rand_kl = abl_kl[len(comps) :].reshape(n_random, len(comps), -1)
    pred = stats.coar_predicted_effect(att.weights[rows_a], sets)
    base_np = base.numpy()[inv]
    margin_diff = float(np.abs(base_np - att.base_margins[rows_a]).max())

    kls: dict[int, np.ndarray] = {}
    kl_check: list[float] = []
    t_kl = 0.0
    if perturbation is not None and s.get("kl", True):
        t1 = time.perf_counter()
        ev = PerturbationEvaluator(
            model,
            cache,
            layout,
            dec.W,
            pefs.norms,
            EvalSettings(
                n_top=int(perturbation.top_indices.shape[1]),
                batch_size=bs,
                eval_all=False,
                n_baseline=1,
            ),
            progress=False,
        )
        vecs = perturbation_vectors(ev, dec, perturbation, comps, dataset_fisher)
        idx = np.sort(rows_w)
        where = {int(j): c for c, j in enumerate(perturbation.component_indices)}
        pos = {int(r): i for i, r in enumerate(rows_w)}
        for j, (v, scale) in vecs.items():
            kls[j] = ev.example_kls(v, scale, idx)[inv]
            c = where[j]
            top_rows = [pos.get(int(t)) for t in perturbation.top_indices[c]]
            if None not in top_rows:  # the recomputed KL against the perturbation stage's
                ref = perturbation.kl_top[c, 0 if perturbation.best_sign[c] > 0 else 1]
                got = float(kls[j][top_rows].mean())
                kl_check.append(abs(got - ref) / max(abs(ref), 1e-12))
        t_kl = time.perf_counter() - t1

    W = np.asarray(dec.W, dtype=np.float64)[rows_w]
    # top-k example sets: at most a fraction of the examples (top-128 of 144 would be trivial)
    frac = s.get("top_examples_max_fraction")
    top = min(int(s["top_examples"]), W.shape[0])
    if frac is not None:
        top = max(1, min(top, int(float(frac) * W.shape[0])))

    Wc = W[:, comps]
    agree_coar = stats.agreement(Wc, pred, top=top)
    agree_true = stats.agreement(Wc, true, top=top)
    agree_rand = [stats.agreement(Wc, rand[d], top=top) for d in range(n_random)]

    rows = []
    for i, j in enumerate(comps):
        w = W[:, j]
        t_abs = np.abs(true[i])
        row: dict[str, Any] = {
            "component": j,
            "top_units": [units.names[c] for c in sets[i]],
            "share_top_units": float(shares[j, sets[i]].sum()),
            "share_all_units": float(shares[j].sum()),
            "spearman_coar": float(agree_coar["spearman"][i]),
            "spearman_true": float(agree_true["spearman"][i]),
            "spearman_random": float(np.nanmean([a["spearman"][i] for a in agree_rand]))
            if n_random
            else None,
            "jaccard_coar": float(agree_coar["jaccard"][i]),
            "jaccard_true": float(agree_true["jaccard"][i]),
            "jaccard_random": float(np.mean([a["jaccard"][i] for a in agree_rand]))
            if n_random
            else None,
            "pearson_coar_vs_true": pearson(pred[i], true[i]),
            "spearman_true_kl": spearman(w, true_kl[i]),
            "spearman_random_kl": float(
                np.nanmean([spearman(w, rand_kl[d, i]) for d in range(n_random)])
            )
            if n_random
            else None,
            "mean_true_effect": float(true[i].mean()),
            "mean_abs_true_effect": float(t_abs.mean()),
        }
        if j in kls:
            row["kl_mean"] = float(kls[j].mean())
            row["kl_spearman_true"] = spearman(kls[j], t_abs)
            row["kl_spearman_random"] = (
                float(np.nanmean([spearman(kls[j], np.abs(rand[d, i])) for d in range(n_random)]))
                if n_random
                else None
            )
            row["kl_spearman_coefficient"] = spearman(kls[j], w)
            # the same in distribution space: KL of the perturbation vs KL of ablating S_j
            row["kl_spearman_ablation_kl"] = spearman(kls[j], true_kl[i])
            row["kl_spearman_ablation_kl_random"] = (
                float(np.nanmean([spearman(kls[j], rand_kl[d, i]) for d in range(n_random)]))
                if n_random
                else None
            )
        rows.append(row)

    def mean(key):
        vals = [r.get(key) for r in rows if r.get(key) is not None]
        vals = [v for v in vals if np.isfinite(v)]
        return float(np.mean(vals)) if vals else None

    summary = {f"{key}_mean": mean(key) for key in STATS}
    pairs = [
        (r["spearman_true"], r["spearman_random"])
        for r in rows
        if r["spearman_random"] is not None and np.isfinite(r["spearman_true"])
    ]
    summary["frac_spearman_true_above_random"] = (
        float(np.mean([a > b for a, b in pairs])) if pairs else None
    )
    return {
        "kind": dec.kind,
        "n_examples": int(len(rows_w)),
        "n_components": len(comps),
        "n_units": units.n_units,
        "top_units": k,
        "top_examples": top,
        "n_random": n_random,
        "n_components_with_kl": len(kls),
        # max relative difference of the recomputed KL's mean over each component's top examples
        # from the perturbation stage's kl_top (a check of the recomputation; null: not covered)
        "kl_top_max_rel_diff_vs_perturbation": max(kl_check) if kl_check else None,
        "max_abs_base_margin_diff_vs_attributions": margin_diff,
        "seconds_ablations": t_ablate,
        "seconds_kl": t_kl,
        **summary,
        "components": rows,
    }
