"""Which class rows each PEF gets, and their weights (algorithm.md §1.2–1.4, §1.7)."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from npeff.errors import NpeffUserError

KINDS = ("lrm", "lvrm", "diag")


@dataclass(frozen=True)
class ClassSelection:
    """Class-selection options of a PEF kind, validated as in the reference's compute script.

    kind "lrm": all classes, or the ``top_k_classes`` most probable (sorted, descending).
    kind "lvrm": the ``max_classes`` most probable with p ≥ ``min_prob_class`` (both required).
    kind "diag": all classes, or those with p ≥ ``min_prob_class`` (no renormalisation).
    """

    kind: str
    top_k_classes: int | None = None
    min_prob_class: float | None = None
    max_classes: int | None = None

    def __post_init__(self):
        k, tk, mp, mc = self.kind, self.top_k_classes, self.min_prob_class, self.max_classes
        if k not in KINDS:
            raise NpeffUserError(f"unknown PEF kind {k!r}; choose one of {KINDS}")
        if k == "lrm" and (mp is not None or mc is not None):
            raise NpeffUserError(
                "LRM PEFs take neither min_prob_class nor max_classes; use kind='lvrm' for a "
                "variable rank, or top_k_classes for a fixed number of classes"
            )
        if k == "lvrm" and (mp is None or mc is None):
            raise NpeffUserError("LVRM PEFs need both min_prob_class and max_classes")
        if k in ("lvrm", "diag") and tk is not None:
            raise NpeffUserError(f"top_k_classes applies to LRM PEFs only, not kind={k!r}")
        if k == "diag" and mc is not None:
            raise NpeffUserError("D-PEFs do not take max_classes (use min_prob_class)")
        if tk is not None and tk < 1:
            raise NpeffUserError(f"top_k_classes must be ≥ 1, got {tk}")
        if mc is not None and mc < 1:
            raise NpeffUserError(f"max_classes must be ≥ 1, got {mc}")
        if mp is not None and not 0.0 <= mp <= 1.0:
            raise NpeffUserError(f"min_prob_class must be in [0, 1], got {mp}")

    def n_rows(self, n_logits: int) -> int:
        """C: the number of class rows stored per example (max rank for LVRM, 1 for D)."""
        if self.kind == "lrm":
            if self.top_k_classes is not None and self.top_k_classes > n_logits:
                raise NpeffUserError(
                    f"top_k_classes={self.top_k_classes} exceeds the model's {n_logits} classes"
                )
            return self.top_k_classes or n_logits
        if self.kind == "lvrm":
            return min(self.max_classes, n_logits)
        return 1


@dataclass
class Rows:
    """Class rows to compute for a batch.

    classes: int [B, k] class ids (descending probability when sorted selection is on).
    weights: [B, k] the factor of ∇log p_c in each row: sqrt(p_c) (LRM/LVRM); 0 for unused rows.
    ranks: int [B] rows in use per example (LVRM, 0 ≤ rank ≤ k; the kept rows come first since
      they are sorted by probability), else None.
    """

    classes: torch.Tensor
    weights: torch.Tensor
    ranks: torch.Tensor | None


def select_rows(sel: ClassSelection, logits: torch.Tensor) -> Rows:
    """Class rows for logits [B, C_model] under the selection ``sel``."""
    b, c = logits.shape
    probs = torch.softmax(logits, dim=-1)
    if sel.kind == "lrm" and sel.top_k_classes is None:
        classes = torch.arange(c, device=logits.device).expand(b, c)
        return Rows(classes, probs.sqrt(), None)
    order = torch.sort(logits, dim=-1, descending=True, stable=True).indices
    p_sorted = torch.gather(probs, 1, order)
    if sel.kind == "lrm":
        k = sel.n_rows(c)
        return Rows(order[:, :k], p_sorted[:, :k].sqrt(), None)
    if sel.kind == "lvrm":
        k = sel.n_rows(c)
        # Rank R_i = the number of the top max_classes with p ≥ min_prob_class, 0 ≤ R_i ≤ k
        # (§1.4): an example whose top class misses the threshold has rank 0 and no rows.
        keep = p_sorted[:, :k] >= sel.min_prob_class
        ranks = keep.sum(dim=1)
        weights = p_sorted[:, :k].sqrt() * keep
        return Rows(order[:, :k], weights, ranks)
    # diag: rows weighted by sqrt(p_c) so that Σ_c row_c² = Σ_c p_c (∇log p_c)².
    if sel.min_prob_class is None:
        classes = torch.arange(c, device=logits.device).expand(b, c)
        return Rows(classes, probs.sqrt(), None)
    keep = p_sorted >= sel.min_prob_class
    k = max(int(keep.sum(dim=1).max()), 1)
    return Rows(order[:, :k], p_sorted[:, :k].sqrt() * keep[:, :k], None)
