"""Independent references the tests compare npeff with: dense float64 autograd loops, and the
field-by-field equality of two PEF files."""

from __future__ import annotations

import numpy as np
import torch
from torch import nn


def dense_class_grads(model: nn.Module, example: dict, params=None):
    """Reference: per-class gradients of log p_c by an autograd loop, float64.

    Returns (log-probs [C], grads [C, m]) for one example (a dict without batch dim).
    """
    named = [(n, p) for n, p in model.named_parameters() if params is None or n in params]
    inputs = {k: v.unsqueeze(0) for k, v in example.items() if k != "labels"}
    out = model(**inputs)
    logits = out.logits if hasattr(out, "logits") else out
    logp = torch.log_softmax(logits[0].double(), -1)
    rows = []
    for c in range(logp.shape[0]):
        gs = torch.autograd.grad(
            logp[c], [p for _, p in named], retain_graph=True, allow_unused=True
        )
        rows.append(
            torch.cat(
                [
                    (torch.zeros_like(p) if g is None else g).reshape(-1)
                    for g, (_, p) in zip(gs, named)
                ]
            )
        )
    return logp.detach(), torch.stack(rows).detach()


def assert_same_pefs(a, b):
    """Two :class:`npeff.artifacts.pefs.Pefs` hold the same kind, arrays, class threshold and
    parameter layout (arrays compared exactly)."""
    assert a.kind == b.kind and a.n_parameters == b.n_parameters
    for f in (
        "values",
        "indices",
        "norms",
        "labels",
        "logits",
        "col_offsets",
        "ranks",
        "col_sizes",
    ):
        x, y = getattr(a, f), getattr(b, f)
        assert (x is None) == (y is None), f
        if x is not None:
            np.testing.assert_array_equal(x, y, err_msg=f)
    assert a.min_prob_class == b.min_prob_class
    assert a.layout == b.layout
