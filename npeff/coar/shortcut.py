"""The Coar-Edit step of the shortcut flow, written against :mod:`npeff.coar` (optional).

Targets are the cue-conflicting examples of the selection split (``fit``, the training
distribution with the cue independent of the label) that the model gets wrong; references are
correctly predicted examples of the same split. COAR attributions are computed on targets and
references, :func:`npeff.coar.edit` ranks the units (Welch t, direction "increase"), and for
every k the top-k units are ablated and the accuracies by cue group measured on every split of
the :class:`~npeff.perturb.shortcut.EditScorer`. The step runs only where ``npeff.coar`` imports
(:func:`available`); the best k is chosen on the selection split like NPEFF's best edit.
"""

from __future__ import annotations

import importlib.util
import logging
from pathlib import Path

import numpy as np
from omegaconf import OmegaConf

from npeff.errors import NpeffUserError

log = logging.getLogger(__name__)


def available() -> bool:
    """Whether :mod:`npeff.coar` is installed (with its ``edit`` and ``compute_attributions``)."""
    try:
        if importlib.util.find_spec("npeff.coar") is None:
            return False
        import npeff.coar as coar

        return hasattr(coar, "edit") and hasattr(coar, "compute_attributions")
    except (ImportError, ValueError, AttributeError):
        return False


def targets_and_references(
    correct: np.ndarray, conflict: np.ndarray, n_targets: int | None, n_references: int, seed: int
) -> tuple[np.ndarray, np.ndarray]:
    """Sorted indices [t], [r]: wrong cue-conflicting examples and correct ones (seeded subsets)."""
    rng = np.random.default_rng(seed)
    targets = np.flatnonzero(conflict & ~correct)
    refs = np.flatnonzero(correct)
    if targets.size == 0:
        raise NpeffUserError(
            "Coar-Edit: the model makes no error on cue-conflicting examples of the selection "
            "split, so there are no targets (did it learn the shortcut?)"
        )
    if n_targets is not None and targets.size > n_targets:
        targets = rng.choice(targets, int(n_targets), replace=False)
    if refs.size > n_references:
        refs = rng.choice(refs, int(n_references), replace=False)
    return np.sort(targets), np.sort(refs)


def run_coar_edit(model, scorer, cfg, output_dir, *, select_on: str, max_other_drop: float) -> dict:
    """Coar-Edit on ``model`` for the shortcut; returns ``{sweep, best, ...}`` (JSON-ready).

    ``scorer``: the flow's :class:`~npeff.perturb.shortcut.EditScorer` (its ``select_on`` split
    supplies targets and references). ``cfg.shortcut_fix.coar``: ``units``, ``alpha``,
    ``n_masks``, ``ks``, ``n_targets``, ``n_references``, ``solver``, ``ridge``.
    """
    from npeff.coar import compute_attributions, edit
    from npeff.coar.ablation import zeroed
    from npeff.perturb.shortcut import best_edit

    cc = cfg.shortcut_fix.coar
    bs = int(cfg.shortcut_fix.batch_size)
    split = scorer.splits[select_on]
    logits = split.cache.logits(model, None, bs)
    correct = logits.argmax(-1).numpy() == split.cache.labels.numpy()
    targets, refs = targets_and_references(
        correct,
        split.masks["conflict"],
        None if cc.n_targets is None else int(cc.n_targets),
        int(cc.n_references),
        int(cfg.shortcut_fix.seed),
    )
    idx = np.union1d(targets, refs)
    batches = list(split.cache.batches(idx, bs))
    units = (
        OmegaConf.to_container(cc.units, resolve=True)
        if OmegaConf.is_config(cc.units)
        else cc.units
    )
    path = Path(output_dir) / "attributions.h5"
    attr = compute_attributions(
        model,
        batches,
        path,
        units=units if units is not None else "neurons",
        alpha=float(cc.alpha),
        n_masks=int(cc.n_masks),
        seed=int(cfg.shortcut_fix.seed),
        solver=str(cc.solver),
        ridge=float(cc.ridge),
        evaluate=bool(cc.evaluate),
        baselines=False,
        progress=bool(cfg.get("progress", True)),
    )
    ks = sorted({0, *(int(k) for k in cc.ks if int(k) <= attr.n_units)})
    res = edit(
        model,
        attr,
        batches,
        targets=np.searchsorted(idx, targets),
        references=np.searchsorted(idx, refs),
        direction="increase",
        k_values=ks,
    )
    before = scorer.before
    sweep = []
    for k in ks:
        with zeroed(model, attr.units, res.order[:k]):
            after = scorer.score_current()
        sweep.append({"k": k, "units": res.ablated_units(k), "before": before, "after": after})
        log.info(
            "Coar-Edit k=%d: %s conflicting %.3f, rest %.3f",
            k,
            select_on,
            after[select_on]["conflict"],
            after[select_on]["other"],
        )
    i, met = best_edit([r for r in sweep if r["k"] > 0], select_on, max_other_drop)
    best = (
        None
        if i is None
        else {**[r for r in sweep if r["k"] > 0][i], "meets_cap_on_selection_split": met}
    )
    return {
        "sweep": sweep,
        "best": best,
        "n_targets": int(targets.size),
        "n_references": int(refs.size),
        "n_units": int(attr.n_units),
        "n_masks": int(attr.n_masks),
        "attributions": str(path),
        "heldout_correlation": attr.eval or None,
        "edit_table": res.table,
    }
