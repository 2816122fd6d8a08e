"""NPEFF decompositions and coefficient files: in-memory type, HDF5 load/save (names in ``keys``)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

import numpy as np
import scipy.sparse as sp

from npeff.artifacts.layout import ParameterLayout

DecompositionKind = Literal["lrm", "diag"]


@dataclass
class Decomposition:
    """An NPEFF decomposition (or a coefficient file: same format, W fitted with G/H frozen).

    Fields (n examples, r components, m' kept parameter columns, m parameters):
      kind: "lrm" (rank-1 PSD components g_k g_kᵀ) or "diag" (D-NPEFF, non-negative h_k).
      W: float32 [n, r] non-negative coefficients.
      G: float32 [r, m'] pseudo-Fisher vectors (LRM), or None when not stored.
      H: float32 [r, m'] dense D-NPEFF components, or a scipy CSR matrix [r, m'] once sparsified.
      new_to_old_col_indices: int [m'] reduced column → parameter index, ascending.
      n_parameters: m. n_classes: C (−1 for LVRM, 1 for D).
      losses: {"G_only": float32 [..], "joint": float32 [..]} logged every log_loss_frequency steps.
      convergence: {"steps": int [s], "cosine": float32 [s, r]} per-component cosine similarity of
        W[:, k] to the previous snapshot, recorded every N steps (paper Fig. 5); may be empty.
      layout: parameter layout of the PEFs it was made from.
      metadata: source PEF file, resolved config, seed, ...
    """

    kind: DecompositionKind
    W: np.ndarray
    new_to_old_col_indices: np.ndarray
    n_parameters: int
    n_classes: int = 1
    G: np.ndarray | None = None
    H: np.ndarray | sp.csr_matrix | None = None
    losses: dict[str, np.ndarray] = field(default_factory=dict)
    log_loss_frequency: int = 10
    convergence: dict[str, np.ndarray] = field(default_factory=dict)
    layout: ParameterLayout | None = None
    metadata: dict = field(default_factory=dict)

    @property
    def n_examples(self) -> int:
        return int(self.W.shape[0])

    @property
    def n_components(self) -> int:
        return int(self.W.shape[1])
