"""Concept analysis for tasks with known concepts (paper §3.2 protocol).

For each component: the share of its top-k examples that hold each concept, the concept held by
the largest share (its "purity"), and whether one concept is held by *all* top-k examples. The
headline statistic is the number of components whose top-k all share at least one concept. It is
reported next to the same count for shuffled coefficients (rows of W permuted with a seeded
generator, i.e. example assignments randomized while every component keeps its coefficient
distribution and components keep their co-occurrence), which is the null distribution of the
statistic for components unrelated to the concepts.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

import numpy as np

from npeff.analysis.controls import shuffled_control
from npeff.analysis.top_examples import top_indices
from npeff.errors import NpeffUserError


@dataclass
class ComponentConcepts:
    """Concept summary of one component's top-k examples."""

    component: int
    best_concept: int  # index of the concept held by the largest share of the top-k
    best_concept_name: str
    purity: float  # share of the top-k holding best_concept, in [0, 1]
    base_rate: float  # share of all examples holding best_concept
    all_share: bool  # True when some concept is held by every top-k example
    shared_concepts: list[str]  # names of all concepts held by every top-k example


@dataclass
class ConceptAnalysis:
    """Concept statistic of a decomposition and its shuffled control.

    Fields (r components, c concepts, s shuffles):
      top_k: the k used. shares: float [r, c] share of top-k holding each concept.
      components: per-component summaries. n_all_share: components whose top-k share a concept.
      shuffled_n_all_share: int [s] the same count with W's rows permuted (seeded).
      shuffled_mean_purity: float [s]. p_value: (1 + #{shuffled >= observed}) / (1 + s).
    """

    top_k: int
    concept_names: list[str]
    shares: np.ndarray
    components: list[ComponentConcepts]
    n_all_share: int
    mean_purity: float
    shuffled_n_all_share: np.ndarray
    shuffled_mean_purity: np.ndarray
    n_shuffles: int
    seed: int
    p_value: float
    extra: dict = field(default_factory=dict)

    @property
    def n_components(self) -> int:
        return len(self.components)

    def summary(self) -> dict:
        """JSON-ready headline numbers."""
        shuf = self.shuffled_n_all_share
        return {
            "top_k": self.top_k,
            "n_components": self.n_components,
            "n_all_share": self.n_all_share,
            "frac_all_share": self.n_all_share / max(self.n_components, 1),
            "mean_purity": self.mean_purity,
            "shuffled_n_all_share_mean": float(shuf.mean()) if shuf.size else float("nan"),
            "shuffled_n_all_share_max": int(shuf.max()) if shuf.size else -1,
            "shuffled_mean_purity": float(self.shuffled_mean_purity.mean())
            if self.shuffled_mean_purity.size
            else float("nan"),
            "n_shuffles": self.n_shuffles,
            "seed": self.seed,
            "p_value": self.p_value,
            **self.extra,
        }

    def to_dict(self) -> dict:
        d = self.summary()
        d["concept_names"] = list(self.concept_names)
        d["components"] = [asdict(c) for c in self.components]
        d["shuffled_n_all_share"] = self.shuffled_n_all_share.tolist()
        return d


def _check_concepts(concepts: np.ndarray, n: int) -> np.ndarray:
    concepts = np.asarray(concepts)
    if concepts.ndim != 2:
        raise NpeffUserError(
            f"concepts must be a bool array [n_examples, n_concepts], got shape {concepts.shape}"
        )
    if concepts.shape[0] < n:
        raise NpeffUserError(
            f"concepts cover {concepts.shape[0]} examples but the coefficients have {n}; "
            "pass the concepts of the split the coefficients were fitted on"
        )
    if concepts.shape[1] == 0:
        raise NpeffUserError("the task defines no concepts; concept analysis needs at least one")
    return concepts[:n].astype(bool)


def concept_shares(W: np.ndarray, concepts: np.ndarray, k: int) -> np.ndarray:
    """float64 [r, c]: share of each component's top-k examples holding each concept."""
    top = top_indices(W, k)  # [r, k]
    concepts = _check_concepts(concepts, np.asarray(W).shape[0])
    return concepts[top].mean(axis=1)  # concepts[top]: [r, k, c]


def count_all_share(W: np.ndarray, concepts: np.ndarray, k: int) -> int:
    """Number of components whose top-k examples all hold at least one common concept."""
    shares = concept_shares(W, concepts, k)
    return int((shares.max(axis=1) >= 1.0).sum())


def analyze_concepts(
    W: np.ndarray,
    concepts: np.ndarray,
    concept_names: list[str] | None = None,
    k: int = 16,
    n_shuffles: int = 20,
    seed: int = 0,
    strata: np.ndarray | None = None,
) -> ConceptAnalysis:
    """Concept statistic of W with its shuffled control.

    Args:
      W: [n, r] non-negative coefficients. concepts: bool [≥n, c] (the first n rows are used).
      k: top examples per component (clipped to n). n_shuffles: permutations of W's rows.
      strata: int [n] or None. When given (e.g. the labels), rows are permuted only within each
        stratum: a stricter null that keeps any concept–label correlation, so a component tuned
        to a label alone does not beat it.
    """
    W = np.asarray(W)
    concepts = _check_concepts(concepts, W.shape[0])
    c = concepts.shape[1]
    names = list(concept_names) if concept_names is not None else [f"concept_{i}" for i in range(c)]
    if len(names) != c:
        raise NpeffUserError(f"{len(names)} concept names given for {c} concepts")
    k_eff = min(int(k), W.shape[0])
    top = top_indices(W, k_eff)  # [r, k]
    shares = concepts[top].mean(axis=1)  # [r, c]
    base_rates = concepts.mean(axis=0)
    best = shares.argmax(axis=1)
    purity = shares.max(axis=1)
    comps = []
    for j in range(W.shape[1]):
        shared = np.flatnonzero(shares[j] >= 1.0)
        comps.append(
            ComponentConcepts(
                component=j,
                best_concept=int(best[j]),
                best_concept_name=names[best[j]],
                purity=float(purity[j]),
                base_rate=float(base_rates[best[j]]),
                all_share=bool(shared.size > 0),
                shared_concepts=[names[i] for i in shared],
            )
        )
    n_all = int(sum(cc.all_share for cc in comps))

    def statistic(perm: np.ndarray) -> np.ndarray:
        # Top-k of W[perm] are the positions inv[t] for the top-k t of W, holding concepts[inv[t]]
        # (identical to recomputing on W[perm] up to the order of exact ties), without copying W.
        inv = np.empty_like(perm)
        inv[perm] = np.arange(perm.size)
        best_share = concepts[inv[top]].mean(axis=1).max(axis=1)  # [r]
        return np.array([(best_share >= 1.0).sum(), best_share.mean()])  # count, mean purity

    control = shuffled_control(
        statistic,
        W.shape[0],
        n_shuffles,
        seed,
        observed=np.array([n_all, purity.mean()]),
        strata=strata,
    )
    shuf_counts = control.shuffled[:, 0].astype(np.int64)
    shuf_purity = control.shuffled[:, 1].astype(np.float64)
    p_value = float(control.p_value()[0])
    return ConceptAnalysis(
        top_k=k_eff,
        concept_names=names,
        shares=shares,
        components=comps,
        n_all_share=n_all,
        mean_purity=float(purity.mean()),
        shuffled_n_all_share=shuf_counts,
        shuffled_mean_purity=shuf_purity,
        n_shuffles=n_shuffles,
        seed=seed,
        p_value=p_value,
        extra={"null": "rows permuted" if strata is None else "rows permuted within strata"},
    )
