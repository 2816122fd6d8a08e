"""Figures of a planted shortcut (:mod:`npeff.tasks.shortcut`): accuracy by cue group, and
whether NPEFF components' top examples are the model's errors and carry the cue.

Groups of examples (from the task's ``cue`` and ``cue_conflict`` concepts):
``conflict`` (cue present, label ≠ the cue's label), ``other`` (all the rest), ``cue_free``
(no cue) and ``all``.
"""

from __future__ import annotations

import numpy as np

from npeff.analysis.controls import shuffled_control
from npeff.analysis.top_examples import top_indices
from npeff.errors import NpeffUserError

GROUPS = ("conflict", "other", "cue_free", "all")


def cue_columns(concept_names: list[str] | None) -> tuple[int, int] | None:
    """Column indices of ``cue`` and ``cue_conflict`` in the concepts, or None without a shortcut."""
    names = list(concept_names or [])
    if "cue" in names and "cue_conflict" in names:
        return names.index("cue"), names.index("cue_conflict")
    return None


def group_masks(concepts: np.ndarray, concept_names: list[str]) -> dict[str, np.ndarray]:
    """Bool [n] masks of the groups ``conflict``, ``other``, ``cue_free``, ``all``."""
    cols = cue_columns(concept_names)
    if cols is None:
        raise NpeffUserError(
            "the task records no 'cue'/'cue_conflict' concepts: turn the shortcut knob on "
            "(task.shortcut, e.g. experiment=shortcut_fix)"
        )
    concepts = np.asarray(concepts, dtype=bool)
    cue, conflict = concepts[:, cols[0]], concepts[:, cols[1]]
    n = concepts.shape[0]
    return {"conflict": conflict, "other": ~conflict, "cue_free": ~cue, "all": np.ones(n, bool)}


def group_accuracies(correct: np.ndarray, masks: dict[str, np.ndarray]) -> dict[str, float]:
    """Accuracy in each group (NaN for an empty group). correct: bool/float [..., n] → floats,
    or arrays [...] when ``correct`` has leading axes (e.g. [components, signs, n])."""
    correct = np.asarray(correct, dtype=np.float64)
    out = {}
    for name, m in masks.items():
        if m.sum() == 0:
            out[name] = np.full(correct.shape[:-1], np.nan) if correct.ndim > 1 else float("nan")
            continue
        acc = correct[..., m].mean(axis=-1)
        out[name] = float(acc) if np.ndim(acc) == 0 else acc
    return out


def shortcut_accuracy_metrics(
    predictions: np.ndarray, labels: np.ndarray, concepts: np.ndarray, concept_names: list[str]
) -> dict[str, float | int]:
    """``{conflict_acc, other_acc, cue_free_acc, all_acc, n_conflict, n_cue_free}`` of one split."""
    masks = group_masks(concepts, concept_names)
    correct = np.asarray(predictions).reshape(-1) == np.asarray(labels).reshape(-1)
    acc = group_accuracies(correct, masks)
    out: dict[str, float | int] = {f"{g}_acc": acc[g] for g in GROUPS}
    out["n_conflict"] = int(masks["conflict"].sum())
    out["n_cue_free"] = int(masks["cue_free"].sum())
    return out


def frac_flawed(
    W: np.ndarray, components: np.ndarray, wrong: np.ndarray, k: int = 16, min_share: float = 0.5
) -> tuple[float, np.ndarray]:
    """Share of ``components`` with ≥ ``min_share`` incorrect predictions among their top ``k``.

    W: [n, r] coefficients; components: int [c]; wrong: bool [n]. Returns (share, bool [c]).
    """
    components = np.asarray(components, dtype=np.int64)
    if components.size == 0:
        return float("nan"), np.zeros(0, dtype=bool)
    top = top_indices(np.asarray(W)[:, components], k)  # [c, k]
    share = np.asarray(wrong, dtype=bool)[top].mean(axis=1)
    flawed = share >= min_share
    return float(flawed.mean()), flawed


def cue_carrying(
    W: np.ndarray,
    components: np.ndarray,
    cue: np.ndarray,
    k: int = 16,
    min_share: float = 0.5,
    n_shuffles: int = 100,
    seed: int = 0,
    strata: np.ndarray | None = None,
) -> dict:
    """Whether the top-``k`` examples of ``components`` carry a concept (``cue`` bool [n]).

    A component carries it when ≥ ``min_share`` of its top-k hold it. The shuffled control permutes
    W's rows (within ``strata`` [n] when given, e.g. prediction correctness, which keeps each
    component's number of incorrect top examples) and recomputes the share of carrying
    components, ``n_shuffles`` times.
    Returns ``{frac, carrying [c], share [c], shuffled_frac_mean, shuffled_frac_max, p_value}``.
    """
    components = np.asarray(components, dtype=np.int64)
    cue = np.asarray(cue, dtype=bool)
    if components.size == 0:  # nothing to test: every figure undefined, the same keys
        return {
            "frac": float("nan"),
            "carrying": [],
            "share": [],
            "shuffled_frac_mean": None,
            "shuffled_frac_max": None,
            "p_value": None,
        }
    top = top_indices(np.asarray(W)[:, components], k)  # [c, k]
    share = cue[top].mean(axis=1)
    carrying = share >= min_share
    frac = float(carrying.mean())

    def statistic(perm: np.ndarray) -> float:
        inv = np.empty_like(perm)
        inv[perm] = np.arange(perm.size)
        return float((cue[inv[top]].mean(axis=1) >= min_share).mean())

    control = shuffled_control(statistic, cue.size, n_shuffles, seed, observed=frac, strata=strata)
    return {
        "frac": frac,
        "carrying": carrying.tolist(),
        "share": share.tolist(),
        "shuffled_frac_mean": control.mean(),
        "shuffled_frac_max": control.max(),
        "p_value": float(control.p_value()),
    }
