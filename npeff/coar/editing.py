"""Coar-Edit (seed-systems.md §1.2): change a model's behaviour on target examples by ablating the
few units whose attributions set the targets apart from reference examples.

1. Score each unit by Welch's t-statistic of the difference in mean attribution between the
   target rows and the reference rows of ``W`` (``[n, |C|]``).
2. To raise the targets' margins, ablate the k units with the most negative scores (keeping them
   helps the targets less than the references: COAR predicts ablating them lowers the targets'
   margins the least, i.e. moves them up relative to the references); to lower them, the most
   positive.
3. Sweep k; every k is one keep-mask, so the whole sweep is one batched ablation pass per data set.

    from npeff.coar import edit, load_attributions
    res = edit(model, load_attributions("attributions.h5"), loader, targets=[3], references=range(50),
               k_values=range(0, 21), data={"all": eval_loader})
    res.table      # [{"k": 0, "acc_targets": ..., "acc_references": ..., "acc_all": ...}, ...]
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import nn

from npeff.coar.ablation import AblationEngine, collect_batches
from npeff.coar.attributions import Attributions
from npeff.errors import NpeffUserError

DIRECTIONS = ("increase", "decrease")


def welch_t(target: np.ndarray, reference: np.ndarray, eps: float = 1e-12) -> np.ndarray:
    """Welch's t per unit: ``(mean_T − mean_R) / sqrt(var_T/n_T + var_R/n_R)`` for attribution
    rows ``target [n_T, |C|]`` and ``reference [n_R, |C|]`` (sample variances; 0 for one row)."""
    t = np.asarray(target, dtype=np.float64)
    r = np.asarray(reference, dtype=np.float64)
    if t.shape[0] < 1 or r.shape[0] < 1:
        raise NpeffUserError("Coar-Edit needs at least one target and one reference example")
    vt = t.var(0, ddof=1) if t.shape[0] > 1 else np.zeros(t.shape[1])
    vr = r.var(0, ddof=1) if r.shape[0] > 1 else np.zeros(r.shape[1])
    return (t.mean(0) - r.mean(0)) / np.sqrt(vt / t.shape[0] + vr / r.shape[0] + eps)


def edit_order(scores: np.ndarray, direction: str = "increase") -> np.ndarray:
    """Units in ablation order for ``direction`` (most negative t first to raise targets)."""
    if direction not in DIRECTIONS:
        raise NpeffUserError(f"direction must be one of {DIRECTIONS}, got {direction!r}")
    order = np.argsort(scores, kind="stable")
    return order if direction == "increase" else order[::-1]


@dataclass
class EditResult:
    """The sweep: ``table`` rows per k, the ablation ``order``, the ``scores`` and choice."""

    k_values: list[int]
    table: list[dict]
    order: np.ndarray  # int64 [|C|] units in ablation order
    scores: np.ndarray  # float64 [|C|] Welch t
    unit_names: list[str]
    best_k: int | None = None
    settings: dict = field(default_factory=dict)

    def ablated_units(self, k: int) -> list[str]:
        return [self.unit_names[c] for c in self.order[: int(k)]]

    def to_json(self) -> dict:
        return {
            "k_values": list(self.k_values),
            "table": self.table,
            "best_k": self.best_k,
            "best_units": self.ablated_units(self.best_k) if self.best_k is not None else None,
            "order": [int(c) for c in self.order],
            "scores": [float(s) for s in self.scores],
            "settings": self.settings,
        }


def _as_index(x, n: int, what: str) -> np.ndarray:
    idx = np.asarray(list(x) if not isinstance(x, np.ndarray) else x, dtype=np.int64).ravel()
    if idx.size == 0:
        raise NpeffUserError(f"no {what} examples given")
    if idx.min() < 0 or idx.max() >= n:
        raise NpeffUserError(f"{what} indices must be in [0, {n}) (the attributed examples)")
    return idx


def edit(
    model: nn.Module,
    attributions: Attributions,
    loader: Iterable[Mapping[str, torch.Tensor]],
    *,
    targets,
    references,
    direction: str = "increase",
    k_values: Iterable[int] | None = None,
    k_max: int | None = None,
    data: Mapping[str, Iterable[Mapping[str, torch.Tensor]]] | None = None,
    select_on: str | None = None,
    max_drop: float = 0.02,
    masks_per_forward: int = 16,
) -> EditResult:
    """Coar-Edit sweep on ``model`` (checked to be the attributions' model).

    ``loader``: the examples the attributions were computed on (same order); ``targets`` and
    ``references`` index them. ``k_values`` (default ``0..k_max``; k_max default: floor(5% of the units)).
    ``data``: more named loaders whose accuracy is reported (e.g. ``{"all": eval_loader}``).
    ``best_k``: the k with the highest target accuracy (ties: smallest k) whose accuracy on
    ``data[select_on]`` (default: the references) drops by at most ``max_drop``.
    Returns :class:`EditResult`; the model's weights are not changed.
    """
    attributions.check_model(model)
    n, c = attributions.n_examples, attributions.n_units
    t_idx = _as_index(targets, n, "target")
    r_idx = _as_index(references, n, "reference")
    if direction not in DIRECTIONS:
        raise NpeffUserError(f"direction must be one of {DIRECTIONS}, got {direction!r}")
    if k_values is None:
        k_max = max(1, int(0.05 * c)) if k_max is None else int(k_max)  # <= 5% of units
        k_values = range(0, k_max + 1)
    ks = sorted({int(k) for k in k_values})
    if ks[0] < 0 or ks[-1] > c:
        raise NpeffUserError(f"k must be in [0, {c}] (the number of units), got {ks[0]}..{ks[-1]}")
    if select_on is not None and select_on not in (data or {}):
        raise NpeffUserError(
            f"select_on={select_on!r} is not one of the data sets {sorted(data or {})}"
        )
    scores = welch_t(attributions.weights[t_idx], attributions.weights[r_idx])
    order = edit_order(scores, direction)
    keep = torch.ones(len(ks), c, dtype=torch.bool)
    for row, k in enumerate(ks):
        keep[row, torch.from_numpy(order[:k].copy())] = False
    engine = AblationEngine(model, attributions.units, masks_per_forward=masks_per_forward)
    examples = collect_batches(loader)
    m = engine.margins(keep, examples).numpy()  # [K, n]
    if m.shape[1] != n:
        raise NpeffUserError(f"the loader has {m.shape[1]} examples, the attributions {n}")
    correct = m > 0
    table = [
        {
            "k": k,
            "acc_targets": float(correct[i, t_idx].mean()),
            "acc_references": float(correct[i, r_idx].mean()),
            "margin_targets": float(m[i, t_idx].mean()),
            "margin_references": float(m[i, r_idx].mean()),
        }
        for i, k in enumerate(ks)
    ]
    for name, dl in (data or {}).items():
        acc = (engine.margins(keep, collect_batches(dl)).numpy() > 0).mean(1)
        for i in range(len(ks)):
            table[i][f"acc_{name}"] = float(acc[i])
    key = f"acc_{select_on}" if select_on else "acc_references"
    base = table[0][key] if ks[0] == 0 else None
    ok = [row for row in table if base is None or row[key] >= base - max_drop]
    best = max(
        ok,
        key=lambda r: (r["acc_targets"] if direction == "increase" else -r["acc_targets"], -r["k"]),
    )
    return EditResult(
        k_values=ks,
        table=table,
        order=order,
        scores=scores,
        unit_names=list(attributions.units.names),
        best_k=int(best["k"]),
        settings={
            "direction": direction,
            "n_targets": int(t_idx.size),
            "n_references": int(r_idx.size),
            "select_on": key,
            "max_drop": float(max_drop),
        },
    )
