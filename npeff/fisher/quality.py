"""How much of each dense PEF the stored sparse entries capture."""

from __future__ import annotations

import numpy as np
import scipy.sparse as sp

from npeff.artifacts.pefs import Pefs


def captured_fraction(pefs: Pefs) -> np.ndarray:
    """‖F̂ᵢ‖_F² / ‖Fᵢ‖_F² per example → float64 [n] (0 where the dense norm is 0).

    D: F̂ = Diag(kept values). LRM/LVRM: F̂ = ÂᵀÂ with Â the kept entries of the class rows,
    ‖ÂᵀÂ‖_F = ‖ÂÂᵀ‖_F computed from the small R×R Gram matrix of the sparse rows.
    """
    norms2 = pefs.norms.astype(np.float64) ** 2
    if pefs.kind == "diag":
        kept = (pefs.values.astype(np.float64) ** 2).sum(axis=1)
    else:
        kept = np.empty(pefs.n_examples)
        if pefs.kind == "lrm":
            pointers = pefs.col_offsets
        else:
            starts = np.concatenate([[0], np.cumsum(pefs.ranks)])
            pointers = [
                np.concatenate([[0], np.cumsum(pefs.col_sizes[starts[i] : starts[i + 1]])])
                for i in range(pefs.n_examples)
            ]
        for i in range(pefs.n_examples):
            ptr = np.asarray(pointers[i])
            rows = sp.csr_matrix(
                (pefs.values[i].astype(np.float64), pefs.indices[i], ptr),
                shape=(len(ptr) - 1, pefs.n_parameters),
            )
            gram = (rows @ rows.T).toarray()
            kept[i] = (gram**2).sum()
    return np.divide(kept, norms2, out=np.zeros_like(kept), where=norms2 > 0)
