"""Side-by-side comparison of NPEFF and the baselines on the same eval examples.

Per method (an examples × components score matrix on the eval split):
  * the concept protocol (``npeff.analysis.concepts.analyze_concepts``) with its shuffled
    controls (rows permuted; rows permuted within each label);
  * the share of components whose top examples are TCAV-significant (``npeff.baselines.tcav``);
  * the average max cosine similarity against NPEFF in both directions
    (``npeff.analysis.matching.average_max_cosine``, clusters as 0/1 membership, paper §3.4),
    with the same for one side's examples permuted as its null reference;
  * NPEFF's perturbation selectivity (median KL ratio of its components' top examples vs random
    ones, and the share of components whose KL ratio beats their PEF-norm ratio); baselines have
    no parameter-space direction to perturb, so they have none.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from npeff.analysis.concepts import analyze_concepts
from npeff.analysis.matching import average_max_cosine, shuffled_average_max_cosine
from npeff.analysis.top_examples import top_indices
from npeff.baselines.tcav import tcav_test
from npeff.errors import NpeffUserError

NO_SELECTIVITY = "n/a: no parameter-space direction to perturb"


@dataclass
class MethodScores:
    """One method's eval-split scores [n, r] (ranked) and its matching coefficients [n, r]."""

    scores: np.ndarray
    matching: np.ndarray | None = None

    @property
    def match(self) -> np.ndarray:
        return self.scores if self.matching is None else self.matching


def concept_sets(W: np.ndarray, k: int, min_size: int = 2) -> tuple[list[np.ndarray], np.ndarray]:
    """Each component's top-k examples with a positive score ([r] index arrays) and a bool [r]
    saying which have at least ``min_size`` of them (the others cannot be tested)."""
    top = top_indices(W, k)
    sets = [t[np.asarray(W)[t, j] > 0] for j, t in enumerate(top)]
    return sets, np.array([s.size >= min_size for s in sets], dtype=bool)


def concept_protocol(
    W: np.ndarray, concepts, concept_names, labels, top_k: int | None, n_shuffles: int, seed: int
) -> dict:
    """The report's concept statistic and controls for one method (same call as the report)."""
    kw = {} if top_k is None else {"k": int(top_k)}
    a = analyze_concepts(W, concepts, concept_names, n_shuffles=n_shuffles, seed=seed, **kw)
    out = {
        "concept_components": a.n_all_share,
        "concept_components_shuffled": float(a.shuffled_n_all_share.mean())
        if a.n_shuffles
        else None,
        "concept_p_value": a.p_value,
        "concept_mean_purity": a.mean_purity,
        "concept_shuffled_mean_purity": float(a.shuffled_mean_purity.mean())
        if a.n_shuffles
        else None,
        "concept_top_k": a.top_k,
    }
    if labels is not None:
        s = analyze_concepts(
            W, concepts, concept_names, n_shuffles=n_shuffles, seed=seed, strata=labels, **kw
        )
        out["concept_components_within_label_shuffled"] = (
            float(s.shuffled_n_all_share.mean()) if s.n_shuffles else None
        )
        out["concept_within_label_p_value"] = s.p_value
    return out


def compare_methods(
    methods: dict[str, MethodScores],
    *,
    reference: str = "npeff",
    concepts: np.ndarray | None = None,
    concept_names: list[str] | None = None,
    labels: np.ndarray | None = None,
    tcav_inputs: tuple[np.ndarray, np.ndarray, np.ndarray] | None = None,
    tcav_examples: int = 16,
    tcav_random: int = 20,
    tcav_alpha: float = 0.05,
    top_k: int | None = None,
    n_shuffles: int = 20,
    match_shuffles: int = 5,
    seed: int = 0,
    selectivity: dict | None = None,
) -> dict[str, dict]:
    """{method: metrics} for every method (keys in the module docstring).

    tcav_inputs: (features [n, d], gradients [n, C, d], labels [n]) of the eval examples, or None
    to skip TCAV. selectivity: the reference's perturbation metrics (``kl_ratio_median``,
    ``frac_kl_ratio_above_norm_ratio``), or None.
    """
    n = {name: m.scores.shape[0] for name, m in methods.items()}
    if len(set(n.values())) > 1:
        raise NpeffUserError(f"the methods cover different numbers of eval examples: {n}")
    out: dict[str, dict] = {}
    ref = methods.get(reference)
    for name, m in methods.items():
        row: dict = {"n_components": int(m.scores.shape[1])}
        if concepts is not None and np.size(concepts):
            row.update(
                concept_protocol(m.scores, concepts, concept_names, labels, top_k, n_shuffles, seed)
            )
        if tcav_inputs is not None:
            feats, grads, tlabels = tcav_inputs
            sets, testable = concept_sets(m.scores, tcav_examples)
            sig = np.zeros(len(sets), dtype=bool)
            if testable.any():
                res = tcav_test(
                    feats,
                    grads,
                    tlabels,
                    [s for s, ok in zip(sets, testable) if ok],
                    n_random=tcav_random,
                    alpha=tcav_alpha,
                    seed=seed,
                )
                sig[testable] = res.significant
            row.update(
                tcav_significant_share=float(sig.mean()),
                tcav_n_significant=int(sig.sum()),
                tcav_n_untestable=int((~testable).sum()),
            )
        if name == reference:
            sel = selectivity or {}
            row["selectivity_kl_ratio_median"] = sel.get("kl_ratio_median")
            row["selectivity_frac_kl_ratio_above_norm_ratio"] = sel.get(
                "frac_kl_ratio_above_norm_ratio"
            )
        else:
            row["selectivity"] = NO_SELECTIVITY
            if ref is not None:
                to_ref, from_ref = average_max_cosine(m.match, ref.match)
                null_to, null_from = shuffled_average_max_cosine(
                    m.match, ref.match, n_shuffles=match_shuffles, seed=seed
                )
                row.update(
                    avg_max_cos_vs_npeff=to_ref,
                    avg_max_cos_npeff_vs=from_ref,
                    avg_max_cos_vs_npeff_shuffled=null_to,
                    avg_max_cos_npeff_vs_shuffled=null_from,
                )
        out[name] = row
    return out
