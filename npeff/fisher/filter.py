"""Choosing a subset of PEFs (algorithm.md §9): incorrect predictions, a label, an index list."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from npeff.artifacts.pefs import Pefs, subset_pefs
from npeff.errors import NpeffUserError


def relabel_nli(labels: np.ndarray) -> np.ndarray:
    """(y + 1) mod 3: the reference's NLI_RELABEL for checkpoints with another label order."""
    return (np.asarray(labels) + 1) % 3


def filter_pefs(
    pefs: Pefs,
    *,
    incorrect_only: bool = False,
    correct_only: bool = False,
    label: int | None = None,
    indices: Sequence[int] | None = None,
    relabel: bool = False,
) -> tuple[Pefs, np.ndarray]:
    """The PEFs that pass every given filter, with every field kept; and their positions.

    ``indices`` (positions in ``pefs``) fixes the order; the other filters keep file order.
    With ``relabel``, labels become (y+1) mod 3 before filtering, and are stored so.
    """
    if incorrect_only and correct_only:
        raise NpeffUserError("incorrect_only and correct_only exclude each other")
    labels = relabel_nli(pefs.labels) if relabel else pefs.labels
    keep = np.ones(pefs.n_examples, dtype=bool)
    pred = pefs.predictions
    if incorrect_only:
        keep &= pred != labels
    if correct_only:
        keep &= pred == labels
    if label is not None:
        keep &= labels == int(label)
    if indices is not None:
        order = np.asarray(list(indices), dtype=np.int64)
        if order.size and (order.min() < 0 or order.max() >= pefs.n_examples):
            raise IndexError(f"filter indices must lie in [0, {pefs.n_examples})")
        order = order[keep[order]]
    else:
        order = np.flatnonzero(keep)
    if relabel:
        pefs = Pefs(**{**pefs.__dict__, "labels": labels})
    return subset_pefs(pefs, order), order
