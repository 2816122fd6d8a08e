"""Stage ``npeff-shortcut``: paper §3.5 on a model with a planted shortcut, NPEFF's fix next to
Coar-Edit's.

Inputs: the checkpoint of a model trained with the task's shortcut knob (``task.shortcut``), the
expanded decomposition (new components first, the pipeline step ``expand``, :mod:`npeff.run.steps.expand`), its
coefficients fitted on ``eval`` and the eval PEF file. Steps:

1. Eval predictions; share of expanded vs original components with ≥ 50% incorrect top-16
   examples (the paper's 41% vs 4.3%); share of the flawed expanded ones whose top examples carry
   the ``cue`` (and ``cue_conflict``) concept, with a shuffled control (rows of W permuted) and a
   stricter one (permuted within correct / incorrect predictions).
2. The edits, chosen on the ``select_on`` split only (``fit``; eval is touched once, to report):
   the flawed expanded components (≥ 8 of their top 16 examples of that split incorrect, by the
   coefficients ``inputs.select_coeffs`` fitted on that split's PEFs) perturbed along their LRM
   directions at ±``magnitude`` (the paper's 0.3), and along the same direction with the sign and
   scale chosen by the loss gradient on the component's incorrect top examples of that split
   (:func:`npeff.perturb.shortcut.edit_records`).
3. Accuracy on cue-conflicting examples, on the rest, on cue-free ones and on all, on ``fit`` and
   ``eval``, before and after every edit; the best edit is chosen on ``select_on``, its ``eval``
   figures reported (``selection_split`` records the split).
4. Coar-Edit on the same model (:mod:`npeff.coar.shortcut`) when ``npeff.coar`` imports:
   targets = cue-conflicting ``fit`` errors, references = correct ``fit`` examples, top-k units
   ablated, the same accuracies against k.

Writes ``shortcut.json`` (everything), ``section.html`` (the report section: one table with both
methods and the unedited model, the paper's figures beside it) and ``metrics.json`` whose
``shortcut`` entry is the pipeline's ``shortcut`` metrics.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any

import numpy as np
from omegaconf import DictConfig

from npeff.artifacts.atomic import atomic_path, json_ready, write_json_atomic
from npeff.errors import NpeffUserError
from npeff.report.sections.shortcut import shortcut_section
from npeff.run.common import stage_main, write_metrics

log = logging.getLogger(__name__)

# The paper's §3.5 figures (tiny BERT-free NLI model; 64 expansion components, 50k examples).
PAPER = {
    "frac_flawed_expanded": 0.41,
    "frac_flawed_original": 0.043,
    "n_flawed_perturbed": 48,
    "n_raising_accuracy_0.5pt": 4,
    "magnitude": 0.3,
}


def _split_examples(task, split: str, batch_size: int, n: int | None = None):
    from npeff.analysis.shortcut import group_masks
    from npeff.perturb.examples import ExampleCache
    from npeff.perturb.shortcut import SplitExamples

    cache = ExampleCache(task.dataloader(split, batch_size), n_examples=n)
    concepts = task.concepts(split)[: cache.n]
    return SplitExamples(cache, group_masks(concepts, task.concept_names)), concepts


def run(cfg: DictConfig, output_dir: str | Path) -> dict:
    """Run the stage; returns its metrics (also in ``metrics.json``)."""
    from npeff.analysis.shortcut import cue_carrying, cue_columns, frac_flawed
    from npeff.artifacts.coefficients import with_components
    from npeff.artifacts.decomposition import load_decomposition
    from npeff.artifacts.pefs import load_pefs
    from npeff.perturb.directions import lrm_direction, normalize_rows
    from npeff.perturb.flawed import expansion_components, select_flawed_components
    from npeff.perturb.shortcut import EditScorer, best_edit, edit_records
    from npeff.perturb.vector import ModelPerturber
    from npeff.tasks.checkpoint import load_checkpoint

    t0 = time.perf_counter()
    output_dir = Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    sc = cfg.shortcut_fix
    loaded = load_checkpoint(cfg.inputs.checkpoint)
    task = loaded.task
    if cue_columns(task.concept_names) is None:
        raise NpeffUserError(
            f"{cfg.inputs.checkpoint}: the model's task has no planted shortcut (no 'cue' "
            "concepts); train with task.shortcut set (experiment=shortcut_fix)"
        )
    dec, comp = with_components(
        load_decomposition(cfg.inputs.coeffs), cfg.inputs.get("decomposition"), cfg.inputs.coeffs
    )
    if dec.kind != "lrm":
        raise NpeffUserError(f"the shortcut flow needs an LRM decomposition, got {dec.kind!r}")
    pefs = load_pefs(cfg.inputs.pefs)
    if not np.array_equal(pefs.source_indices, np.arange(dec.n_examples)):
        raise NpeffUserError(
            "the coefficients must cover the eval split's first examples in order (an unfiltered "
            "eval PEF file)"
        )
    explicit = sc.get("expansion_components")
    expanded = sorted(set(expansion_components(dec, comp, explicit)))
    original = [j for j in range(dec.n_components) if j not in set(expanded)]

    model = loaded.model.eval()
    bs = int(sc.batch_size)
    ev, ev_concepts = _split_examples(task, "eval", bs, dec.n_examples)
    fit, _ = _split_examples(task, str(sc.select_on), bs)
    layout = dec.layout or pefs.layout
    perturber = ModelPerturber(model, layout)
    scorer = EditScorer(model, perturber, {"eval": ev, str(sc.select_on): fit}, bs)
    before = scorer.before
    logits = ev.cache.logits(model, None, bs)
    preds = logits.argmax(-1).numpy()
    labels = ev.cache.labels.numpy()
    wrong = preds != labels
    cue_i, conflict_i = cue_columns(task.concept_names)

    # 1. flawed shares and the cue concept
    k, share = int(sc.n_top), float(sc.min_incorrect_share)
    frac_exp, flawed_exp_mask = frac_flawed(dec.W, np.asarray(expanded), wrong, k, share)
    frac_orig, flawed_orig_mask = frac_flawed(dec.W, np.asarray(original), wrong, k, share)
    flawed_exp = np.asarray(expanded)[flawed_exp_mask]
    cue_stats = {}
    for concept, col in (("cue", cue_i), ("cue_conflict", conflict_i)):
        for name, comps in (("flawed_expanded", flawed_exp), ("expanded", np.asarray(expanded))):
            kw = dict(k=k, min_share=float(sc.cue_min_share), n_shuffles=int(sc.n_shuffles))
            plain = cue_carrying(dec.W, comps, ev_concepts[:, col], seed=int(sc.seed), **kw)
            strict = cue_carrying(
                dec.W, comps, ev_concepts[:, col], seed=int(sc.seed), strata=wrong, **kw
            )
            cue_stats[f"{concept}.{name}"] = plain | {
                "within_correctness_shuffled_frac_mean": strict["shuffled_frac_mean"],
                "within_correctness_p_value": strict["p_value"],
            }

    # 2. edits of the flawed expansion components, chosen on the selection split only: which
    # components (their top examples' errors), each edit's sign and scale, and the best edit
    on, cap = str(sc.select_on), float(sc.max_other_drop)
    W_sel = _selection_coefficients(cfg, dec, on)
    if W_sel.shape[0] > fit.cache.n:
        raise NpeffUserError(
            f"inputs.select_coeffs has {W_sel.shape[0]} rows, the {on} split only {fit.cache.n} "
            "examples: fit them on that split's PEF file"
        )
    sel_labels = fit.cache.labels.numpy()[: W_sel.shape[0]]
    sel_preds = fit.cache.logits(model, None, bs)[: W_sel.shape[0]].argmax(-1).numpy()
    wrong_sel = sel_preds != sel_labels
    selected = select_flawed_components(
        W_sel, expanded, sel_labels, sel_preds, n_top=k, min_incorrect=int(sc.min_incorrect)
    ).tolist()
    G_unit = normalize_rows(dec.G)
    directions = {
        j: lrm_direction(dec.G, dec.new_to_old_col_indices, layout, j, sc.tau, G_unit)
        for j in selected
    }
    records = edit_records(
        model,
        perturber,
        scorer,
        directions,
        fit,
        W_sel,
        wrong_sel,
        float(sc.magnitude),
        k,
        gradient=dict(sc.gradient) if sc.gradient.enabled else None,
        batch_size=bs,
    )
    kinds = {"paper": [r for r in records if r["kind"] != "gradient"]}
    kinds["gradient"] = [r for r in records if r["kind"] == "gradient"]
    kinds["any"] = records
    best = {}
    for name, recs in kinds.items():
        i, met = best_edit(recs, on, cap)
        best[name] = None if i is None else {**recs[i], "meets_cap_on_selection_split": met}

    # 4. Coar-Edit (optional; needs npeff.coar)
    from npeff.coar import shortcut as shortcut_coar

    coar = None
    if sc.coar.enabled and shortcut_coar.available():
        coar = shortcut_coar.run_coar_edit(
            model, scorer, cfg, output_dir, select_on=on, max_other_drop=cap
        )
    elif sc.coar.enabled:
        log.warning("shortcut: npeff.coar is not installed here; the Coar-Edit step is skipped")

    def after(b: dict | None, split: str, group: str):
        return None if b is None else b["after"][split][group]

    bn = best["any"]
    cb = None if coar is None else coar.get("best")
    metrics_sc: dict[str, Any] = {
        "conflict_acc_before": before["eval"]["conflict"],
        "other_acc_before": before["eval"]["other"],
        "cue_free_acc_before": before["eval"]["cue_free"],
        "all_acc_before": before["eval"]["all"],
        "n_conflict_eval": int(ev.masks["conflict"].sum()),
        "frac_flawed_expanded": frac_exp,
        "frac_flawed_original": frac_orig,
        "n_expanded": len(expanded),
        "n_original": len(original),
        "n_flawed_expanded": int(flawed_exp.size),
        "frac_cue_flawed_expanded": cue_stats["cue.flawed_expanded"]["frac"],
        "frac_cue_flawed_expanded_shuffled": cue_stats["cue.flawed_expanded"]["shuffled_frac_mean"],
        "frac_cue_flawed_expanded_within_correctness_shuffled": cue_stats["cue.flawed_expanded"][
            "within_correctness_shuffled_frac_mean"
        ],
        "n_selected": len(selected),
        "npeff": {
            "conflict_acc_after": after(bn, "eval", "conflict"),
            "other_acc_after": after(bn, "eval", "other"),
            "cue_free_acc_after": after(bn, "eval", "cue_free"),
            "all_acc_after": after(bn, "eval", "all"),
            "edit": None if bn is None else {k: bn[k] for k in ("component", "kind", "scale")},
            "paper_conflict_acc_after": after(best["paper"], "eval", "conflict"),
            "paper_other_acc_after": after(best["paper"], "eval", "other"),
            "gradient_conflict_acc_after": after(best["gradient"], "eval", "conflict"),
            "gradient_other_acc_after": after(best["gradient"], "eval", "other"),
        },
        "coar": {
            "available": coar is not None,
            "conflict_acc_after": after(cb, "eval", "conflict"),
            "other_acc_after": after(cb, "eval", "other"),
            "cue_free_acc_after": after(cb, "eval", "cue_free"),
            "all_acc_after": after(cb, "eval", "all"),
            "k": None if cb is None else cb["k"],
        },
        "select_on": on,
        "selection_split": on,
        "max_other_drop": cap,
        "paper": dict(PAPER),
    }
    summary = {
        "shortcut": metrics_sc,
        "expanded_components": expanded,
        "flawed_expanded": flawed_exp.tolist(),
        "flawed_original": np.asarray(original)[flawed_orig_mask].tolist(),
        "selected_components": selected,
        "cue_concept": cue_stats,
        "before": before,
        "edits": records,
        "best": best,
        "coar": coar,
        "seconds": time.perf_counter() - t0,
    }
    write_json_atomic(output_dir / "shortcut.json", json_ready(summary))
    with atomic_path(output_dir / "section.html") as tmp:
        tmp.write_text(shortcut_section(summary), encoding="utf-8")
    metrics = {"shortcut": json_ready(metrics_sc), "seconds": summary["seconds"]}
    write_metrics(output_dir, metrics)
    log.info(
        "shortcut: conflict acc %.3f → %.3f (NPEFF), other %.3f → %s; flawed expanded %.2f vs "
        "original %.2f",
        before["eval"]["conflict"],
        metrics_sc["npeff"]["conflict_acc_after"] or float("nan"),
        before["eval"]["other"],
        metrics_sc["npeff"]["other_acc_after"],
        frac_exp,
        frac_orig,
    )
    return metrics


def _selection_coefficients(cfg: DictConfig, dec, split: str) -> np.ndarray:
    """W [n_sel, r] of the selection split's first examples, in order: ``inputs.select_coeffs``
    (the pipeline fits the expanded decomposition on the fit PEFs), checked against ``dec``."""
    from npeff.artifacts.decomposition import load_decomposition

    path = (cfg.inputs.get("select_coeffs") or "") if "inputs" in cfg else ""
    if str(path) in ("", "???", "None"):
        raise NpeffUserError(
            f"the edits are chosen on shortcut_fix.select_on={split}: pass inputs.select_coeffs, "
            f"the decomposition's coefficients fitted on that split's PEFs (npeff-fit "
            f"inputs.pefs=<{split} pefs.h5> inputs.decomposition=<expanded decomposition.h5>)"
        )
    sel = load_decomposition(path)
    if sel.n_components != dec.n_components:
        raise NpeffUserError(
            f"inputs.select_coeffs has {sel.n_components} components, the decomposition "
            f"{dec.n_components}: fit them with the same (expanded) decomposition"
        )
    return np.asarray(sel.W)


main = stage_main("shortcut", run, single_process=True)


if __name__ == "__main__":
    main()
