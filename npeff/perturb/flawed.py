"""The flawed-heuristic experiment helpers (paper §3.5).

Components learned by expanding a decomposition on the PEFs of incorrectly predicted examples,
with coefficients fitted on an unfiltered set, are "flawed heuristics" when many of their top
examples are mispredicted. Perturbing them (magnitude 0.3) and counting those that raise the
model's accuracy by ≥ 0.5 percentage points is the paper's proof of concept.
"""

from __future__ import annotations

import numpy as np

from npeff.analysis.top_examples import top_indices
from npeff.artifacts.perturbation import PerturbationResult
from npeff.errors import NpeffUserError


def select_flawed_components(
    W: np.ndarray,
    component_indices,
    labels: np.ndarray,
    predictions: np.ndarray,
    n_top: int = 16,
    min_incorrect: int = 8,
) -> np.ndarray:
    """The components among ``component_indices`` with ≥ ``min_incorrect`` wrong predictions in
    their top ``n_top`` examples by coefficient.

    W: float [n, r] coefficients on the unfiltered set; labels, predictions: int [n].
    Returns the selected component indices (int64, in the given order).
    """
    W = np.asarray(W)
    labels = np.asarray(labels).reshape(-1)
    predictions = np.asarray(predictions).reshape(-1)
    if not (W.shape[0] == labels.shape[0] == predictions.shape[0]):
        raise NpeffUserError(
            f"W has {W.shape[0]} rows, labels {labels.shape[0]} and predictions "
            f"{predictions.shape[0]} entries; they must describe the same examples"
        )
    wrong = labels != predictions
    out = []
    for j in component_indices:
        j = int(j)
        if not 0 <= j < W.shape[1]:
            raise IndexError(f"component {j} out of range for {W.shape[1]} components")
        top = top_indices(W[:, [j]], n_top)[0]
        if int(wrong[top].sum()) >= min_incorrect:
            out.append(j)
    return np.asarray(out, dtype=np.int64)


def accuracy_changes(res: PerturbationResult, threshold: float = 0.005) -> dict:
    """Each component's change in accuracy on all examples after perturbation.

    The sign of a perturbation is not determined, so both are tried: ``best_change`` [c] is the
    larger of the two changes (acc_all_after − acc_all_before, as fractions). A component
    "raises accuracy" when best_change ≥ ``threshold`` (0.005 = 0.5 percentage points).
    """
    after = np.asarray(res.acc_all_after, dtype=np.float64)
    if after.size and np.all(np.isnan(after)):
        raise NpeffUserError(
            "the result holds no accuracy on all examples; run the perturbation with eval_all=true"
        )
    change = after - float(res.acc_all_before)
    best = np.nanmax(change, axis=1) if change.size else np.zeros(0)
    finite = np.nan_to_num(change, nan=-np.inf)
    best_sign = np.where(finite[:, 1] > finite[:, 0], -1, 1) if change.size else np.zeros(0)
    raising = best >= threshold
    return {
        "component_indices": np.asarray(res.component_indices, dtype=np.int64).tolist(),
        "accuracy_change": change.tolist(),
        "best_change": best.tolist(),
        "best_change_sign": best_sign.astype(int).tolist(),
        "threshold": float(threshold),
        "n_components": int(len(best)),
        "n_raising_accuracy": int(raising.sum()),
        "raising_components": np.asarray(res.component_indices)[raising].astype(int).tolist(),
    }


def expansion_components(dec, comp=None, explicit=None) -> list[int]:
    """The components an expansion learned (the non-frozen ones), as component indices.

    ``explicit`` (``perturb.flawed.expansion_components``) wins; else the metadata of ``dec``
    (coefficients), of ``comp`` (their component file) or of their source decomposition.
    """
    from npeff.artifacts.coefficients import source_decomposition

    if explicit is not None:
        return [int(j) for j in explicit]
    sources = [dec, comp] if comp is not None else [dec]
    if comp is None:
        src = source_decomposition(dec)
        if src is not None:
            sources.append(src)
    for d in sources:
        meta = d.metadata or {}
        if meta.get("expansion_component_indices") is not None:
            return [int(j) for j in meta["expansion_component_indices"]]
        for key in ("n_frozen_components", "n_frozen"):
            if meta.get(key):
                # expansions put the new (learned) components first, the frozen ones last (§7.2)
                return list(range(dec.n_components - int(meta[key])))
    raise NpeffUserError(
        "perturb.select=flawed needs the expansion components, but neither the coefficients nor "
        "their decomposition record frozen components; pass "
        "perturb.flawed.expansion_components=[...]"
    )
