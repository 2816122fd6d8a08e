"""Editing a model with a planted shortcut: parameter edits scored by cue group.

:class:`EditScorer` applies θ + s·v to one loaded model and measures the accuracy on the
cue-conflicting examples, on the rest, on cue-free examples and on all, on one or more splits
(:mod:`npeff.analysis.shortcut` groups). :func:`gradient_scale` is the step "beyond the paper"
(§3.5 names loss-gradient information as future work): along a component's unit direction v, the
sign is the descent sign of the loss on the component's incorrect top examples and the scale is
the first minimum of that loss along the line, found with its derivative
dL(θ + ρv)/dρ = ⟨∇L(θ + ρv), v⟩ (bracketing, then bisection on the derivative's sign).
:func:`best_edit` chooses one edit on a selection split under a cap on the loss on the rest.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import nn

from npeff.analysis.shortcut import group_accuracies
from npeff.analysis.top_examples import top_indices
from npeff.errors import NpeffUserError
from npeff.perturb.examples import ExampleCache, ForwardFn, default_forward_logits
from npeff.perturb.vector import ModelPerturber, ParameterVector


@dataclass
class SplitExamples:
    """One split's examples for scoring: the cache (rows in split order) and group masks [n]."""

    cache: ExampleCache
    masks: dict[str, np.ndarray]

    def __post_init__(self) -> None:
        for name, m in self.masks.items():
            if np.asarray(m).shape != (self.cache.n,):
                raise NpeffUserError(
                    f"group mask {name!r} has shape {np.shape(m)}, not ({self.cache.n},)"
                )


class EditScorer:
    """Accuracies by group of θ + scale·v on every split, for many edits of one model."""

    def __init__(
        self,
        model: nn.Module,
        perturber: ModelPerturber,
        splits: dict[str, SplitExamples],
        batch_size: int = 256,
        forward: ForwardFn | None = None,
    ):
        self.model = model
        self.perturber = perturber
        self.splits = splits
        self.batch_size = int(batch_size)
        self.forward = forward or default_forward_logits
        self.before = self.score_current()

    def score_current(self) -> dict[str, dict[str, float]]:
        """``{split: {group: accuracy}}`` of the model as it is now."""
        out = {}
        for name, sp in self.splits.items():
            logits = sp.cache.logits(self.model, None, self.batch_size, self.forward)
            correct = logits.argmax(-1).numpy() == sp.cache.labels.numpy()
            out[name] = group_accuracies(correct, sp.masks)
        return out

    def score(self, vector: ParameterVector, scale: float) -> dict[str, dict[str, float]]:
        """``{split: {group: accuracy}}`` of the model at θ + scale·vector (θ restored after)."""
        with self.perturber.perturbed(vector, scale):
            return self.score_current()


def loss_and_slope(
    model: nn.Module,
    perturber: ModelPerturber,
    batches: list[dict],
    vector: ParameterVector,
    rho: float,
    forward: ForwardFn | None = None,
) -> tuple[float, float]:
    """Mean cross-entropy L(θ + ρv) over ``batches`` and its derivative ⟨∇L(θ + ρv), v⟩."""
    forward = forward or default_forward_logits
    names = list(perturber.params)
    plist = [perturber.params[n] for n in names]
    saved = [p.requires_grad for p in plist]
    named = vector.named()
    n = sum(int(b["labels"].shape[0]) for b in batches)
    total_loss, slope = 0.0, 0.0
    with perturber.perturbed(vector, rho):
        try:
            for p in plist:
                p.requires_grad_(True)
            with torch.enable_grad():
                for batch in batches:
                    logits = forward(model, batch)
                    loss = torch.nn.functional.cross_entropy(
                        logits.float(), batch["labels"].long(), reduction="sum"
                    ) / max(n, 1)
                    grads = torch.autograd.grad(loss, plist, allow_unused=True)
                    total_loss += float(loss.detach())
                    for name, g in zip(names, grads):
                        if g is not None:
                            slope += float((g.double() * named[name].to(g.device).double()).sum())
        finally:
            for p, s in zip(plist, saved):
                p.requires_grad_(s)
    return total_loss, slope


@dataclass
class GradientStep:
    """The chosen signed scale and how it was found."""

    scale: float
    loss_before: float
    loss_after: float
    slope_at_zero: float
    n_evals: int
    hit_max: bool
    trace: list[tuple[float, float, float]] = field(default_factory=list)  # (ρ, L, dL/dρ)


def gradient_scale(
    loss_slope: Callable[[float], tuple[float, float]],
    rho0: float = 0.3,
    rho_max: float = 3.0,
    n_bisect: int = 8,
) -> GradientStep:
    """The signed scale ρ* of the first minimum of L(θ + ρv) on the descent side of ρ = 0.

    ``loss_slope(ρ)`` returns (L, dL/dρ). The sign is −sign(dL/dρ at 0); the distance doubles from
    ``rho0`` until the derivative along the descent side turns non-negative (or ``rho_max``),
    then ``n_bisect`` bisections on its sign. Returns ρ* (signed) with the losses.
    """
    if not 0 < rho0 <= rho_max:
        raise NpeffUserError(f"need 0 < rho0 ({rho0}) <= rho_max ({rho_max})")
    trace = []
    f0, d0 = loss_slope(0.0)
    trace.append((0.0, f0, d0))
    if d0 == 0.0:
        return GradientStep(0.0, f0, f0, d0, 1, False, trace)
    sign = -1.0 if d0 > 0 else 1.0
    lo, hi = 0.0, float(rho0)
    while True:
        f, d = loss_slope(sign * hi)
        trace.append((sign * hi, f, d))
        if sign * d >= 0 or hi >= rho_max:
            break
        lo, hi = hi, min(2.0 * hi, float(rho_max))
    hit_max = sign * d < 0
    best_rho, best_f = sign * hi, f
    if not hit_max:
        for _ in range(int(n_bisect)):
            mid = 0.5 * (lo + hi)
            f, d = loss_slope(sign * mid)
            trace.append((sign * mid, f, d))
            if sign * d < 0:
                lo = mid
            else:
                hi = mid
        # the smallest loss seen on the bracket's ends
        candidates = [(r, fl) for r, fl, _ in trace if r * sign >= 0]
        best_rho, best_f = min(candidates, key=lambda t: t[1])
    return GradientStep(best_rho, f0, best_f, d0, len(trace), hit_max, trace)


def best_edit(
    records: list[dict], on: str, max_other_drop: float = 0.02
) -> tuple[int | None, bool]:
    """Index of the record with the largest gain in ``conflict`` accuracy on split ``on`` among
    those whose ``other`` accuracy drops by ≤ ``max_other_drop``; without any such record, the
    largest gain overall. Returns (index or None for no records, whether the cap was met).

    A record holds ``before`` and ``after``: ``{split: {group: accuracy}}``.
    """
    if not records:
        return None, False

    def gain(r: dict) -> float:
        return r["after"][on]["conflict"] - r["before"][on]["conflict"]

    def drop(r: dict) -> float:
        return r["before"][on]["other"] - r["after"][on]["other"]

    ok = [i for i, r in enumerate(records) if drop(r) <= max_other_drop + 1e-12]
    pool = ok or list(range(len(records)))
    i = max(pool, key=lambda i: (gain(records[i]), -drop(records[i])))
    return i, bool(ok)


def edit_records(
    model: nn.Module,
    perturber: ModelPerturber,
    scorer: EditScorer,
    directions: dict[int, ParameterVector],
    select: SplitExamples,
    W_select: np.ndarray,
    wrong_select: np.ndarray,
    magnitude: float,
    n_top: int,
    gradient: dict | None = None,
    batch_size: int = 256,
) -> list[dict]:
    """Every edit of every component j in ``directions`` (unit LRM directions), each chosen with
    the selection split only: θ ± ``magnitude``·v_j (the paper's), and with ``gradient`` settings
    (``rho0``, ``rho_max``, ``n_bisect``) the loss-gradient step (:func:`gradient_scale`) on j's
    incorrectly predicted top-``n_top`` examples of that split.

    W_select: [n_sel, r] coefficients of the selection split's first n_sel examples (in
    ``select.cache`` order); wrong_select: bool [n_sel]. Each record holds ``component``,
    ``kind``, ``scale``, ``before`` / ``after`` (``{split: {group: accuracy}}`` of ``scorer``, the
    reported figures; nothing here reads them to choose) and, for gradient edits, ``gradient``.
    """
    records: list[dict] = []
    for j, v in directions.items():
        for s in (1, -1):
            records.append(
                {
                    "component": j,
                    "kind": f"{'+' if s > 0 else '-'}{magnitude:g}",
                    "scale": s * magnitude,
                }
                | {"before": scorer.before, "after": scorer.score(v, s * magnitude)}
            )
        if gradient is None:
            continue
        top = top_indices(W_select[:, [j]], n_top)[0]
        bad = np.sort(top[wrong_select[top]])
        if bad.size == 0:  # nothing to descend on: no gradient edit for this component
            continue
        batches = list(select.cache.batches(bad, batch_size))
        step = gradient_scale(
            lambda rho, v=v, batches=batches: loss_and_slope(model, perturber, batches, v, rho),
            rho0=float(gradient["rho0"]),
            rho_max=float(gradient["rho_max"]),
            n_bisect=int(gradient["n_bisect"]),
        )
        rec = {"component": j, "kind": "gradient", "scale": step.scale}
        rec["gradient"] = {
            "n_examples": int(bad.size),
            "loss_before": step.loss_before,
            "loss_after": step.loss_after,
            "slope_at_zero": step.slope_at_zero,
            "n_evals": step.n_evals,
            "hit_rho_max": step.hit_max,
        }
        records.append(rec | {"before": scorer.before, "after": scorer.score(v, step.scale)})
    return records
