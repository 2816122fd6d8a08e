"""Perturb a list of components of an LRM or D-NPEFF decomposition with one loaded model."""

from __future__ import annotations

import logging
from dataclasses import asdict

import numpy as np
import torch
from tqdm.auto import tqdm

from npeff.artifacts.decomposition import Decomposition
from npeff.artifacts.perturbation import PerturbationResult
from npeff.errors import NpeffUserError
from npeff.perturb.directions import (
    ZeroDirection,
    d_merge_delta,
    h_row,
    loss_gradient_sign,
    lrm_direction,
    normalize_rows,
    unit_dataset_fisher,
)
from npeff.perturb.evaluation import PerturbationEvaluator
from npeff.perturb.targeting import KlTargetSettings, target_kl
from npeff.perturb.vector import ParameterVector

log = logging.getLogger(__name__)


def check_components(dec: Decomposition, components) -> list[int]:
    """``components`` (None = all) as a list of valid component indices."""
    r = dec.n_components
    if components is None:
        return list(range(r))
    out = [int(j) for j in components]
    bad = [j for j in out if not 0 <= j < r]
    if bad:
        raise IndexError(f"component indices {bad} out of range for a decomposition with {r}")
    return out


def perturb_lrm(
    evaluator: PerturbationEvaluator,
    dec: Decomposition,
    components=None,
    magnitude: float = 0.1,
    tau: float | None = 0.35,
    progress: bool = True,
) -> PerturbationResult:
    """LRM perturbations (algorithm.md §8.1): θ ± magnitude·v_j for each component j.

    A component without a direction (an all-zero G row, or nothing left after the rejection) is
    skipped and listed with the reason in ``metadata["skipped_components"]``."""
    if dec.kind != "lrm" or dec.G is None:
        raise NpeffUserError(
            f"LRM perturbations need an LRM decomposition with G (got kind={dec.kind!r}); "
            "use perturb=diag for D-NPEFF"
        )
    comps = check_components(dec, components)
    G_unit = normalize_rows(dec.G)
    records, skipped, pending = [], [], []
    group = max(1, evaluator.settings.sets_per_forward // 2)  # components per stacked forward
    for i, j in enumerate(tqdm(comps, desc="perturb (lrm)", disable=not progress)):
        try:
            v = lrm_direction(dec.G, dec.new_to_old_col_indices, evaluator.layout, j, tau, G_unit)
            pending.append((j, v, magnitude, None))
        except ZeroDirection as e:
            log.warning("component %d skipped: %s", j, e)
            skipped.append({"component": j, "reason": str(e)})
        if pending and (len(pending) == group or i == len(comps) - 1):
            records.extend(evaluator.evaluate_many(pending))
            pending = []
    meta = {"kind": "lrm", "tau": tau, "magnitude": magnitude, "skipped_components": skipped}
    return evaluator.result(records, magnitude, meta)


def diag_merge(
    evaluator: PerturbationEvaluator,
    dec: Decomposition,
    j: int,
    fisher_unit: np.ndarray,
    fisher_floor: float,
    top: np.ndarray,
):
    """(δ, λ) → component j's Fisher-merge perturbation θ' − θ (algorithm.md §8.3) as a
    ``ParameterVector``, with the loss-gradient sign taken on the examples ``top``."""
    layout = evaluator.layout
    h = np.zeros(layout.n_parameters, dtype=np.float64)
    h[np.asarray(dec.new_to_old_col_indices, dtype=np.int64)] = h_row(dec.H, j)
    h_norm = np.linalg.norm(h)
    if not h_norm > 0:
        raise ZeroDirection(f"component {j} has an all-zero H row (pseudo-Fisher diagonal)")
    h /= h_norm
    sign = loss_gradient_sign(
        evaluator.model,
        evaluator.gradient_batches(top),
        evaluator.perturber.params,
        layout,
        evaluator.forward,
    )

    def vector(delta: float, lam: float) -> ParameterVector:
        d = d_merge_delta(h, fisher_unit, sign, delta, lam, fisher_floor)
        return ParameterVector(layout, torch.as_tensor(d, dtype=torch.float32))

    return vector


def diag_direction(
    evaluator: PerturbationEvaluator,
    dec: Decomposition,
    j: int,
    fisher_unit: np.ndarray,
    settings: KlTargetSettings,
    fisher_floor: float,
    rng: np.random.Generator,
) -> tuple[ParameterVector | None, dict]:
    """The KL-targeted Fisher-merge perturbation θ' − θ for component j (algorithm.md §8.3).

    Returns (vector, info); the vector is None when targeting found no (δ, λ) in range.
    """
    top = evaluator.top(j)
    vector = diag_merge(evaluator, dec, j, fisher_unit, fisher_floor, top)

    def kl_fn(delta: float, lam: float) -> float:
        return evaluator.mean_top_kl(top, vector(delta, lam), 1.0)

    res = target_kl(kl_fn, settings, rng)
    info = {
        "delta": res.delta,
        "lambda": res.lam,
        "target_kl": res.kl,
        "kl_target_found": res.found,
        "n_kl_evals": res.n_evals,
    }
    if not res.found:
        return None, info
    v = vector(res.delta, res.lam)
    info["perturbation_norm"] = v.norm()
    return v, info


def perturb_diag(
    evaluator: PerturbationEvaluator,
    dec: Decomposition,
    dataset_fisher: np.ndarray,
    components=None,
    kl_settings: KlTargetSettings | None = None,
    fisher_floor: float = 1e-6,
    seed: int = 0,
    progress: bool = True,
) -> PerturbationResult:
    """D-NPEFF perturbations: Fisher-merge directions with KL targeting, scored with both signs;
    the reported KL ratio is the targeted sign's (+, the loss-gradient sign the targeting tuned),
    the other sign's is kept in ``metadata["kl_ratio_untargeted"]`` (§8.3).

    ``dataset_fisher`` [m] is the dataset-level diagonal Fisher (normalized to unit norm here and
    floored at ``fisher_floor``). A component with an all-zero H row, or whose targeting fails,
    gets no result; it is listed with the reason in ``metadata["skipped_components"]``.
    """
    if dec.kind != "diag" or dec.H is None:
        raise NpeffUserError(
            f"D-NPEFF perturbations need a D-NPEFF decomposition with H (got kind={dec.kind!r}); "
            "use perturb=lrm for LRM-NPEFF"
        )
    dataset_fisher = np.asarray(dataset_fisher).reshape(-1)
    if dataset_fisher.shape[0] != evaluator.layout.n_parameters:
        raise NpeffUserError(
            f"the dataset Fisher has {dataset_fisher.shape[0]} entries but the model layout has "
            f"{evaluator.layout.n_parameters} parameters"
        )
    kl_settings = kl_settings or KlTargetSettings()
    fisher_unit = unit_dataset_fisher(dataset_fisher)
    comps = check_components(dec, components)
    rng = np.random.default_rng(seed)
    records, skipped = [], []
    for j in tqdm(comps, desc="perturb (diag)", disable=not progress):
        try:
            v, info = diag_direction(evaluator, dec, j, fisher_unit, kl_settings, fisher_floor, rng)
        except ZeroDirection as e:
            log.warning("component %d skipped: %s", j, e)
            skipped.append({"component": j, "reason": str(e)})
            continue
        if v is None:
            reason = "KL targeting found no (delta, lambda) in range"
            log.warning("component %d skipped: %s", j, reason)
            skipped.append({"component": j, "reason": reason, **info})
            continue
        records.append(evaluator.evaluate(j, v, 1.0, extra=info))
    meta = {
        "kind": "diag",
        "fisher_floor": fisher_floor,
        "kl_target": asdict(kl_settings),
        "targeting_seed": seed,
        "skipped_components": skipped,
    }
    return evaluator.result(records, float("nan"), meta, targeted_sign=1)
