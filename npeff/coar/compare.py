"""NPEFF vs COAR on one model (seed-systems.md §4.4): the statistics, as pure functions.

- :func:`unit_shares`: m_j[c], the share of ‖g_j‖² (LRM-NPEFF, ``kind="lrm"``) or of h_j
  (D-NPEFF, ``kind="diag"``) on the weight entries of unit c: ``[r, |C|]``.
- :func:`top_unit_sets`: S_j, the ``k`` units with the largest share per component.
- :func:`coar_predicted_effect`: COAR's predicted margin change of ablating S_j,
  ``−Σ_{c∈S_j} A[:, c]`` ``[n]`` per component.
- :func:`true_effect`: the real margin change of ablating S_j (batched, via the engine);
  :func:`true_effect_and_kl` with the per-example KL(p_θ ‖ p_ablated) too.
- :func:`agreement`: per component, Spearman ρ across examples between NPEFF coefficients and an
  effect (COAR-predicted or true), and the Jaccard overlap of the top-``top`` example sets next to
  the same statistic for random unit sets of the same size.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
import torch
from scipy.stats import spearmanr

from npeff.analysis.top_examples import top_indices
from npeff.artifacts.layout import ParameterLayout
from npeff.coar.ablation import AblationEngine
from npeff.models.units import UnitMap, mass_on_units, unit_membership


def unit_shares(
    vectors,
    layout: ParameterLayout,
    unit_map: UnitMap,
    kind: str = "lrm",
    col_indices: np.ndarray | None = None,
) -> np.ndarray:
    """``[r, |C|]`` share of each component's mass on each unit.

    ``vectors`` ``[r, m']`` (dense, or a scipy sparse matrix such as a sparsified D-NPEFF H): G
    (LRM; mass = g²) or H (D; mass = h ≥ 0) over the kept columns ``col_indices`` (positions in
    ``layout``'s flat vector; None: all m columns). A share is of the component's whole mass,
    units or not, so a row sums to the fraction of the mass on unit weights.
    """
    owner = unit_map.unit_of_flat(layout).numpy()
    if col_indices is not None:
        owner = owner[np.asarray(col_indices, dtype=np.int64)]
    return mass_on_units(vectors, unit_membership(owner, unit_map.n_units), kind)


def top_unit_sets(shares: np.ndarray, k: int) -> np.ndarray:
    """int64 ``[r, k]``: per component the ``k`` units with the largest share."""
    return top_indices(np.asarray(shares).T, int(k))


def coar_predicted_effect(attributions: np.ndarray, sets: np.ndarray) -> np.ndarray:
    """``[r, n]``: −Σ_{c∈S_j} A[:, c], COAR's predicted margin change from ablating S_j."""
    a = np.asarray(attributions, dtype=np.float64)
    return np.stack([-a[:, s].sum(1) for s in np.asarray(sets)])


def true_effect(
    engine: AblationEngine, batches: list[Mapping], base: torch.Tensor, sets: np.ndarray
) -> np.ndarray:
    """``[r, n]``: real margin change (ablated − base) from ablating each S_j (one pass)."""
    keep = torch.ones(len(sets), engine.units.n_units, dtype=torch.bool)
    for j, s in enumerate(np.asarray(sets)):
        keep[j, torch.from_numpy(np.asarray(s, dtype=np.int64))] = False
    return (engine.margins(keep, batches) - base[None, :]).numpy()


def true_effect_and_kl(
    engine: AblationEngine, batches: list[Mapping], sets: np.ndarray, chunk: int = 256
) -> tuple[np.ndarray, np.ndarray]:
    """``([r, n], [r, n])``: the real margin change (ablated − base) of ablating each S_j and the
    per-example KL(p_θ ‖ p_ablated), from one batched pass (masks in chunks of ``chunk``)."""
    from npeff.coar.ablation import margin
    from npeff.models.core import LABELS_KEY, forward_logits
    from npeff.perturb.metrics import per_example_kl

    sets = np.asarray(sets)
    with torch.no_grad():
        base_logits = [forward_logits(engine.model, b) for b in batches]
    eff, kls = [], []
    for lo in range(0, len(sets), chunk):
        part = sets[lo : lo + chunk]
        keep = torch.ones(len(part), engine.units.n_units, dtype=torch.bool)
        for j, s in enumerate(part):
            keep[j, torch.from_numpy(np.asarray(s, dtype=np.int64))] = False
        row_e, row_k = [], []
        for mlo in range(0, len(part), engine.masks_per_forward):
            k = keep[mlo : mlo + engine.masks_per_forward]
            e_b, k_b = [], []
            for b, base in zip(batches, base_logits):
                logits = engine.logits(k, b)  # [M, B, K]
                lab = b[LABELS_KEY]
                e_b.append(margin(logits, lab) - margin(base, lab)[None])
                k_b.append(
                    per_example_kl(
                        base.expand_as(logits).reshape(-1, base.shape[-1]),
                        logits.reshape(-1, base.shape[-1]),
                    ).view(logits.shape[:2])
                )
            row_e.append(torch.cat(e_b, 1))
            row_k.append(torch.cat(k_b, 1))
        eff.append(torch.cat(row_e, 0))
        kls.append(torch.cat(row_k, 0))
    return torch.cat(eff).double().numpy(), torch.cat(kls).numpy()


def _jaccard(a: np.ndarray, b: np.ndarray) -> float:
    sa, sb = set(a.tolist()), set(b.tolist())
    return len(sa & sb) / max(1, len(sa | sb))


def agreement(
    coefficients: np.ndarray,
    effects: np.ndarray,
    random_effects: np.ndarray | None = None,
    top: int = 128,
) -> dict:
    """Per component j: Spearman ρ across examples between ``coefficients[:, j]`` (``[n, r]``)
    and the size of the effect ``|effects[j]|`` (``[r, n]``), and the Jaccard overlap of the
    top-``top`` examples of both; with ``random_effects`` (``[r, n]`` for random unit sets of the
    same sizes) the same two statistics as a baseline."""
    w = np.asarray(coefficients, dtype=np.float64)
    top = min(int(top), w.shape[0])

    def stats(eff):
        rho, jac = [], []
        for j in range(w.shape[1]):
            e = np.abs(eff[j])
            r = spearmanr(w[:, j], e).statistic if np.ptp(w[:, j]) > 0 and np.ptp(e) > 0 else np.nan
            rho.append(float(r))
            jac.append(_jaccard(top_indices(w[:, [j]], top)[0], top_indices(e[:, None], top)[0]))
        return np.asarray(rho), np.asarray(jac)

    rho, jac = stats(np.asarray(effects))
    out = {"spearman": rho, "jaccard": jac}
    if random_effects is not None:
        rr, rj = stats(np.asarray(random_effects))
        out |= {"spearman_random": rr, "jaccard_random": rj}
    return out


def random_unit_sets(n_units: int, sizes, seed: int = 0) -> np.ndarray:
    """Random unit sets of the given sizes (one per component), as ``[r, k]``."""
    rng = np.random.default_rng(seed)
    return np.stack([rng.choice(n_units, size=int(k), replace=False) for k in sizes])
