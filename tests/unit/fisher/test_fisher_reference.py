"""The dense float64 per-example Fisher reference (tests/helpers/references.py) checked against
an explicit m×m Fisher."""

from __future__ import annotations

import numpy as np
import torch

from tests.helpers.problems import problem
from tests.helpers.references import dense_class_grads


def test_reference_diag_equals_explicit_fisher():
    """Σ_c p_c g_c² equals the diagonal of the explicit m×m Fisher Σ_c p_c g_c g_cᵀ, and ‖AᵀA‖_F
    equals the Frobenius norm of that Fisher."""
    model, ds = problem("mlp", n=2)
    logp, g = dense_class_grads(model, ds[0])
    p = logp.exp()
    fisher = sum(p[c] * torch.outer(g[c], g[c]) for c in range(len(p)))
    a = p.sqrt()[:, None] * g
    np.testing.assert_allclose((a**2).sum(0), torch.diagonal(fisher), rtol=1e-10, atol=1e-14)
    gram = a @ a.T
    np.testing.assert_allclose(gram.norm(), fisher.norm(), rtol=1e-10)
    # log-probs of a classifier: Σ_c p_c ∇log p_c = 0
    np.testing.assert_allclose((p[:, None] * g).sum(0), 0, atol=1e-12)
