"""Features for gradient clustering: the normalized per-example gradient of the predicted class.

The gradient of log p_ŷ(x) (ŷ = the model's most probable class) with respect to the selected
parameters is exactly the one row of an LRM PEF with ``top_k_classes=1`` up to its weight
sqrt(p_ŷ), so the PEF engine (``npeff.fisher.compute_pefs``: torch.func per-example gradients,
top-K sparsification by |value|, streamed, resumable HDF5) computes them, and the weight cancels
in the normalization. Where the parameters are many only the K largest entries are kept; each
example's kept vector is scaled to unit L2 norm, so k-means on them clusters directions.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import scipy.sparse as sp
from torch import nn

from npeff.errors import NpeffUserError


def n_selected_parameters(model: nn.Module, include=None, exclude=None) -> int:
    from npeff.models.core import select_parameters

    return int(sum(p.numel() for _, p in select_parameters(model, include, exclude)))


def compute_gradients(
    model: nn.Module,
    loader,
    path: str | os.PathLike,
    n_values: int,
    params=None,
    exclude_params=None,
    chunk_size: int = 16,
    metadata: dict | None = None,
    progress: bool = True,
) -> Path:
    """Stream the top-``n_values`` entries of every example's ∇log p_ŷ into a PEF file ``path``
    (kind lrm, one class row). ``n_values`` is clipped to the number of selected parameters
    (then the gradients are kept whole)."""
    from npeff.fisher import compute_pefs

    m = n_selected_parameters(model, params, exclude_params)
    return compute_pefs(
        model,
        loader,
        path,
        kind="lrm",
        n_values=min(int(n_values), m),
        top_k_classes=1,
        params=params,
        exclude_params=exclude_params,
        chunk_size=chunk_size,
        metadata=metadata,
        progress=progress,
    )


def gradient_features(pefs) -> sp.csr_matrix:
    """Unit-norm sparse gradient vectors float64 CSR [n, m] from a one-row LRM PEF set."""
    if pefs.kind != "lrm" or pefs.n_classes != 1:
        raise NpeffUserError(
            f"gradient features need one-row LRM PEFs (top_k_classes=1), got kind={pefs.kind} "
            f"with {pefs.n_classes} rows"
        )
    n, k = pefs.values.shape
    values = np.asarray(pefs.values, dtype=np.float64)
    norms = np.linalg.norm(values, axis=1, keepdims=True)
    values = values / np.where(norms > 0, norms, 1.0)
    indptr = np.arange(0, n * k + 1, k, dtype=np.int64)
    X = sp.csr_matrix(
        (values.ravel(), np.asarray(pefs.indices).ravel(), indptr), shape=(n, pefs.n_parameters)
    )
    X.sum_duplicates()
    return X
