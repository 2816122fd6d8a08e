"""The per-example Fisher (PEF) set: in-memory type, HDF5 load/save (names in ``keys``)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

import numpy as np

from npeff.artifacts.layout import ParameterLayout

PefKind = Literal["lrm", "lvrm", "diag"]


@dataclass
class Pefs:
    """A set of n sparse per-example Fishers.

    Fields (n examples, K stored values per example, C class rows, C_model logits):
      kind: "lrm" (fixed C rows), "lvrm" (variable rank R_i rows) or "diag" (D-PEF).
      values: float32 [n, K]. LRM/LVRM: signed entries of A_i, grouped by class row, ascending
        parameter index within each row. D: non-negative f_i entries, descending.
      indices: int32 [n, K] parameter indices in [0, n_parameters) (``row_indices`` / D ``indices``).
      norms: float32 [n] dense norms: ‖F_i‖_F (LRM/LVRM) or ‖f_i‖_2 (D).
      labels: int64 [n] true labels. logits: float32 [n, C_model] original logits.
      n_parameters: m.
      col_offsets: int32 [n, C+1] cumulative per-row offsets (LRM only).
      ranks: int32 [n] and col_sizes: int32 [Σ ranks] per-row counts (LVRM only).
      min_prob_class: LVRM threshold, else None.
      layout: the parameter layout (None for reference files without npeff metadata).
      metadata: free-form npeff metadata (config, model identity, ...).
    """

    kind: PefKind
    values: np.ndarray
    indices: np.ndarray
    norms: np.ndarray
    labels: np.ndarray
    logits: np.ndarray
    n_parameters: int
    col_offsets: np.ndarray | None = None
    ranks: np.ndarray | None = None
    col_sizes: np.ndarray | None = None
    min_prob_class: float | None = None
    layout: ParameterLayout | None = None
    metadata: dict = field(default_factory=dict)

    @property
    def n_examples(self) -> int:
        return int(self.values.shape[0])

    @property
    def n_values_per_example(self) -> int:
        return int(self.values.shape[1])

    @property
    def n_classes(self) -> int:
        """C for LRM, −1 for LVRM (reference convention), 1 for D."""
        if self.kind == "lrm":
            return int(self.col_offsets.shape[1] - 1)
        if self.kind == "lvrm":
            return -1
        return 1

    @property
    def predictions(self) -> np.ndarray:
        return np.asarray(self.logits).argmax(-1)
