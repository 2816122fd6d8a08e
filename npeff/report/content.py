"""Gather everything a report shows from in-memory artifacts (no Fisher or decomposition is recomputed).

``prepare_report`` turns a decomposition (and optionally fitted coefficients, PEFs, display
examples, concepts and a perturbation result) into a ``ReportContent``: the run summary, one card
per component with its top examples, and the figures as PNG bytes. ``render`` (html.py) and the
W&B helpers (wandb_log.py) only read this object.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from npeff.analysis.concepts import ConceptAnalysis, analyze_concepts
from npeff.analysis.convergence import cosine_to_final, first_step_reaching
from npeff.analysis.matching import component_similarity
from npeff.analysis.top_examples import pef_norm_ratio, top_indices
from npeff.errors import NpeffUserError
from npeff.report import figures


@dataclass
class ExampleView:
    """One top example as displayed: its index, coefficient, label/prediction and content."""

    index: int  # row of W / the PEFs
    rank: int
    coefficient: float
    source_index: int | None = None  # position in the task split (differs for filtered PEFs)
    label: str | None = None
    prediction: str | None = None
    correct: bool | None = None
    text: str | None = None
    text_pair: str | None = None
    inputs: str | None = None
    image_png: bytes | None = None
    concepts: list[str] = field(default_factory=list)


@dataclass
class ComponentCard:
    """Everything shown for one component."""

    component: int
    examples: list[ExampleView]
    stats: dict[str, Any]


@dataclass
class ReportContent:
    title: str
    summary: dict[str, Any]
    cards: list[ComponentCard]
    figures: dict[str, bytes]  # file stem → PNG bytes
    kl_ratio: np.ndarray | None  # [c] per evaluated component
    norm_ratio: np.ndarray | None  # [c] (perturbation) or [r] (from PEF norms)
    concept_analysis: ConceptAnalysis | None = None
    comparison: dict[str, dict] | None = None  # {method: metrics} (npeff.baselines.compare)
    sections: list[str] = field(default_factory=list)  # extra HTML fragments (e.g. npeff-groups)


def _attr(obj: Any, name: str, default: Any = None) -> Any:
    """Field of a PerturbationResult-like object (dataclass or mapping)."""
    if obj is None:
        return default
    if isinstance(obj, dict):
        return obj.get(name, default)
    return getattr(obj, name, default)


def _median(x: np.ndarray | None) -> float | None:
    if x is None:
        return None
    x = np.asarray(x, dtype=np.float64)
    x = x[np.isfinite(x)]
    return float(np.median(x)) if x.size else None


def _name(names: list[str] | None, i: int) -> str:
    if names is not None and 0 <= i < len(names):
        return str(names[i])
    return str(i)


def _coefficients(decomposition: Any, coeffs: Any) -> np.ndarray:
    src = coeffs if coeffs is not None else decomposition
    if src is None:
        raise NpeffUserError(
            "a report needs a decomposition or a coefficient file (inputs.decomposition / inputs.coeffs)"
        )
    W = src if isinstance(src, np.ndarray) else getattr(src, "W", None)
    if W is None:
        raise NpeffUserError(f"cannot find coefficients W in {type(src).__name__}")
    W = np.asarray(W)
    if W.ndim != 2:
        raise NpeffUserError(
            f"coefficients W must be 2-D [n_examples, n_components], got shape {W.shape}"
        )
    return W


def _component_vectors(decomposition: Any) -> tuple[str, Any] | None:
    for name in ("G", "H"):
        v = getattr(decomposition, name, None)
        if v is not None and getattr(v, "shape", (0,))[0] > 0:
            return name, v
    return None


def prepare_report(
    decomposition: Any = None,
    pefs: Any = None,
    examples: list[dict] | None = None,
    concepts: np.ndarray | None = None,
    perturbation: Any = None,
    label_names: list[str] | None = None,
    *,
    coeffs: Any = None,
    concept_names: list[str] | None = None,
    top_k: int = 16,
    n_display: int = 8,
    max_cards: int = 128,
    n_shuffles: int = 20,
    seed: int = 0,
    n_top_ratio: int = 128,
    n_baseline: int = 10_000,
    title: str = "NPEFF report",
    sources: dict[str, Any] | None = None,
    comparison: dict[str, dict] | None = None,
    concept_top_k: int | None = None,
    tables: dict[str, list] | None = None,
) -> ReportContent:
    """Collect the report's numbers, cards and figures.

    Args (n examples, r components, c concepts):
      decomposition: a ``Decomposition`` (G/H, losses, convergence; its W if ``coeffs`` is None).
      pefs: the ``Pefs`` the coefficients belong to (labels, logits, norms), or None.
      examples: display records of the split (``task.examples(split)``), or None; PEF row i shows
        ``examples[pefs.source_indices[i]]`` (identity unless the PEF file is a filtered subset).
      concepts: bool [n_split, c] of the same split, or None (indexed like ``examples``).
      perturbation: a ``PerturbationResult`` (or a mapping with its fields), or None.
      label_names: class names for labels and predictions, or None (shown as numbers).
      coeffs: a coefficient file (``Decomposition``) or W [n, r] fitted on the report's examples.
      comparison: {method: metrics} of NPEFF and baselines (``npeff.baselines.compare``), or None.
      concept_top_k: top examples per component for the concept statistic (paper §3.2: 128;
        clipped to n); None = ``top_k``. ``top_k`` still sets the per-card error count.
      tables: extra ``{title: [(name, value), ...]}`` tables shown with the summary.
    """
    concept_k = int(top_k if concept_top_k is None else concept_top_k)
    W = _coefficients(decomposition, coeffs)
    n, r = W.shape
    if pefs is not None and pefs.n_examples != n:
        raise NpeffUserError(
            f"the PEF file has {pefs.n_examples} examples but the coefficients have {n}; pass the PEFs "
            "the coefficients were computed on (inputs.pefs of the decompose or fit run)"
        )
    # Row i of W / the PEFs is example source[i] of the split (a filtered PEF file holds a subset).
    source = np.asarray(
        getattr(pefs, "source_indices", np.arange(n)) if pefs is not None else np.arange(n)
    )
    need = int(source.max()) + 1 if source.size else 0
    if examples is not None:
        if len(examples) < need:
            raise NpeffUserError(
                f"the task gives {len(examples)} display examples but the coefficients need {need}; "
                "check `split` matches the split the PEFs were computed on"
            )
        examples = [examples[i] for i in source]
    if concepts is not None and np.size(concepts):
        concepts = np.asarray(concepts)
        if concepts.ndim != 2 or concepts.shape[0] < need:
            raise NpeffUserError(
                f"concepts have shape {concepts.shape} but the coefficients need {need} examples; "
                "pass the concepts of the split the PEFs were computed on"
            )
        concepts = concepts[source]
    labels = np.asarray(pefs.labels) if pefs is not None else None
    if labels is not None and examples is not None and all("label" in e for e in examples[:n]):
        ex_labels = np.asarray([int(e["label"]) for e in examples[:n]])
        bad = np.flatnonzero(ex_labels != labels)
        if bad.size:
            raise NpeffUserError(
                f"{bad.size} of the first {n} display examples have labels that differ from the PEF "
                f"file's (first at example {bad[0]}); the examples come from another split or order than "
                "the PEFs: pass the split the PEFs were computed on"
            )
    preds = (
        np.asarray(pefs.logits).argmax(-1) if pefs is not None and np.size(pefs.logits) else None
    )
    if labels is None and examples is not None and all("label" in e for e in examples[:n]):
        labels = np.asarray([int(e["label"]) for e in examples[:n]])

    summary: dict[str, Any] = {
        "n_examples": n,
        "n_components": r,
        "kind": getattr(decomposition, "kind", None) or getattr(coeffs, "kind", None),
        "n_parameters": getattr(decomposition, "n_parameters", None),
        "n_kept_columns": int(np.size(getattr(decomposition, "new_to_old_col_indices", [])))
        or None,
        "coefficients_from": "coeffs" if coeffs is not None else "decomposition",
        "mean_nonzero_coefficients_per_example": float((W > 0).sum(axis=1).mean()),
    }
    if labels is not None and preds is not None:
        summary["accuracy"] = float((labels == preds).mean())
    losses = dict(getattr(decomposition, "losses", {}) or {})
    for phase, vals in losses.items():
        if np.size(vals):
            summary[f"final_loss_{phase}"] = float(np.asarray(vals).ravel()[-1])
    convergence = dict(getattr(decomposition, "convergence", {}) or {})
    if np.size(convergence.get("cosine", [])):
        summary["final_mean_convergence_cosine"] = float(
            np.nanmean(np.asarray(convergence["cosine"])[-1])
        )
    to_final = None
    snaps = convergence.get("snapshots")
    if snaps is not None and np.size(snaps) and getattr(decomposition, "W", None) is not None:
        snaps = np.asarray(snaps)
        if snaps.ndim == 3 and snaps.shape[1:] == np.shape(decomposition.W):
            snap_steps = np.asarray(convergence.get("snapshot_steps", np.arange(snaps.shape[0])))
            cos_final = cosine_to_final(snaps, decomposition.W)
            to_final = (snap_steps, cos_final)
            mean = cos_final.mean(axis=1)
            summary["convergence_step_mean_cos_final_0.95"] = first_step_reaching(
                snap_steps, mean, 0.95
            )
            summary["convergence_step_mean_cos_final_0.99"] = first_step_reaching(
                snap_steps, mean, 0.99
            )

    # Perturbation: per evaluated component.
    pert_row: dict[int, int] = {}
    skipped: dict[int, str] = {}  # components the perturbation stage skipped → why
    kl_ratio = norm_ratio = None
    if perturbation is not None:
        pert_meta = _attr(perturbation, "metadata") or {}
        for item in pert_meta.get("skipped_components", []) or []:
            skipped[int(item["component"])] = str(item.get("reason", "skipped"))
        if skipped:
            summary["skipped_components"] = [f"{j}: {why}" for j, why in skipped.items()]
        if pert_meta.get("sign_policy"):
            summary["sign_policy"] = pert_meta["sign_policy"]
        comp_idx = np.asarray(_attr(perturbation, "component_indices"), dtype=np.int64)
        pert_row = {int(c): i for i, c in enumerate(comp_idx)}
        kl_ratio = np.asarray(_attr(perturbation, "kl_ratio"), dtype=np.float64)
        norm_ratio = np.asarray(_attr(perturbation, "pef_norm_ratio"), dtype=np.float64)
        summary.update(
            n_perturbed_components=int(comp_idx.size),
            perturbation_magnitude=_attr(perturbation, "magnitude"),
            median_kl_ratio=_median(kl_ratio),
            median_pef_norm_ratio=_median(norm_ratio),
            frac_kl_ratio_above_norm_ratio=float(np.mean(kl_ratio > norm_ratio))
            if kl_ratio.size
            else None,
            acc_all_before=_attr(perturbation, "acc_all_before"),
        )
        summary["norm_ratio_source"] = "perturbation"
    elif pefs is not None:
        norm_ratio = pef_norm_ratio(
            W, pefs.norms, n_top=n_top_ratio, n_baseline=n_baseline, seed=seed
        )
        summary["median_pef_norm_ratio"] = _median(norm_ratio)
        summary["norm_ratio_source"] = (
            f"PEF norms, top {min(n_top_ratio, n)} vs seeded random {min(n_baseline, n)}"
        )

    # Concepts.
    analysis = None
    if concepts is not None and np.size(concepts) and np.asarray(concepts).shape[1] > 0:
        analysis = analyze_concepts(
            W, concepts, concept_names, k=concept_k, n_shuffles=n_shuffles, seed=seed
        )
        summary["concepts"] = analysis.summary()
        if labels is not None:
            # Stricter control: shuffle only within each true label, keeping concept–label links.
            strat = analyze_concepts(
                W,
                concepts,
                concept_names,
                k=concept_k,
                n_shuffles=n_shuffles,
                seed=seed,
                strata=labels,
            )
            summary["concepts"].update(
                within_label_shuffled_n_all_share_mean=float(strat.shuffled_n_all_share.mean())
                if strat.n_shuffles
                else None,
                within_label_shuffled_mean_purity=float(strat.shuffled_mean_purity.mean())
                if strat.n_shuffles
                else None,
                within_label_p_value=strat.p_value,
            )
        if int(top_k) < concept_k:  # also at the cards' smaller k, readable on small example sets
            small = analyze_concepts(
                W, concepts, concept_names, k=top_k, n_shuffles=n_shuffles, seed=seed
            ).summary()
            summary["concepts"].update(
                small_top_k=small["top_k"],
                small_n_all_share=small["n_all_share"],
                small_shuffled_n_all_share_mean=small["shuffled_n_all_share_mean"],
            )
        concept_names = analysis.concept_names
        concepts = np.asarray(concepts, dtype=bool)

    # Cards.
    top_all = top_indices(W, max(top_k, n_display))
    cards = []
    for j in range(min(r, max_cards)):
        exs = []
        for rank, i in enumerate(top_all[j][:n_display]):
            ex = examples[i] if examples is not None else {}
            view = ExampleView(
                index=int(i), rank=rank, coefficient=float(W[i, j]), source_index=int(source[i])
            )
            if labels is not None:
                view.label = _name(label_names, int(labels[i]))
            if preds is not None:
                view.prediction = _name(label_names, int(preds[i]))
                view.correct = bool(labels[i] == preds[i]) if labels is not None else None
            for key in ("text", "text_pair", "inputs"):
                if ex.get(key) is not None:
                    setattr(view, key, str(ex[key]))
            if ex.get("image") is not None:
                view.image_png = figures.image_thumbnail(ex["image"])
            if analysis is not None:
                view.concepts = [concept_names[c] for c in np.flatnonzero(concepts[i])]
            exs.append(view)
        topk = top_all[j][:top_k]
        stats: dict[str, Any] = {
            "n_nonzero": int((W[:, j] > 0).sum()),
            "max_coefficient": float(W[:, j].max()),
        }
        if labels is not None and preds is not None:
            stats[f"incorrect_in_top_{len(topk)}"] = int((labels[topk] != preds[topk]).sum())
        if analysis is not None:
            cc = analysis.components[j]
            stats.update(
                best_concept=cc.best_concept_name,
                purity=cc.purity,
                base_rate=cc.base_rate,
                all_share=cc.all_share,
                shared_concepts=cc.shared_concepts,
            )
        if j in pert_row:
            p = pert_row[j]
            sign = _attr(perturbation, "best_sign")
            stats.update(kl_ratio=float(kl_ratio[p]), pef_norm_ratio=float(norm_ratio[p]))
            if sign is not None:
                stats["best_sign"] = int(np.asarray(sign)[p])
                s_idx = 0 if stats["best_sign"] > 0 else 1
                for key in ("acc_top_after", "acc_all_after"):
                    v = _attr(perturbation, key)
                    if v is not None:
                        stats[key] = float(np.asarray(v)[p, s_idx])
            v = _attr(perturbation, "acc_top_before")
            if v is not None:
                stats["acc_top_before"] = float(np.asarray(v)[p])
        elif j in skipped:
            stats["perturbation_skipped"] = skipped[j]
        elif perturbation is None and norm_ratio is not None:
            stats["pef_norm_ratio"] = float(norm_ratio[j])
        cards.append(ComponentCard(component=j, examples=exs, stats=stats))

    # Figures.
    figs: dict[str, bytes | None] = {
        "ratio_histograms": figures.ratio_histograms(kl_ratio, norm_ratio),
        "losses": figures.loss_curves(
            losses, int(getattr(decomposition, "log_loss_frequency", 1) or 1)
        ),
        "convergence": figures.convergence_curves(convergence, to_final),
    }
    panels = []
    vecs = _component_vectors(decomposition) if decomposition is not None else None
    if vecs is not None:
        panels.append((f"|cos| between rows of {vecs[0]}", component_similarity(vecs[1])))
    panels.append(("|cos| between coefficient columns of W", component_similarity(W.T)))
    figs["component_similarity"] = figures.similarity_heatmaps(panels)
    if analysis is not None:
        figs["concept_purity"] = figures.concept_purity_plot(
            np.array([c.purity for c in analysis.components]),
            float(analysis.shuffled_mean_purity.mean()) if analysis.n_shuffles else float("nan"),
            analysis.n_all_share,
            float(analysis.shuffled_n_all_share.mean()) if analysis.n_shuffles else float("nan"),
            analysis.top_k,
        )
    if sources:
        summary["sources"] = {k: str(v) for k, v in sources.items() if v is not None}
    if tables:
        summary["tables"] = {str(t): [tuple(r) for r in rows] for t, rows in tables.items()}
    summary["n_cards"] = len(cards)
    return ReportContent(
        title=title,
        summary=summary,
        cards=cards,
        figures={k: v for k, v in figs.items() if v is not None},
        kl_ratio=kl_ratio,
        norm_ratio=norm_ratio,
        concept_analysis=analysis,
        comparison=comparison,
    )
