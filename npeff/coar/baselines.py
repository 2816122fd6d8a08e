"""COAR's baselines: leave-one-out (LOO) and gradient×parameter (GP) attributions.

Both give attributions in COAR's convention, ``[n, |C|]`` = the margin gained by *keeping* unit c:

- LOO: ``base_margin − margin with unit c alone ablated`` (one batched pass over |C| masks).
- GP: the first-order estimate of the same, ``θ_c · ∂margin/∂θ_c`` over the unit's weight slices.
  For an output row r of a Linear/conv weight, ``W_r·∂m/∂W_r = Σ_pos ∂m/∂z_r (z_r − b_r)``; the
  code multiplies each masked module's output (before its bias) by a per-example gate of ones and
  reads ``∂m_i/∂gate_{i,c}``, which is exactly Σ over the unit's slices of θ·∇θ (one backward per
  batch; examples are independent, so the batch sum gives per-example values).
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
from torch import nn

from npeff.coar.ablation import AblationEngine, margin
from npeff.errors import NpeffUserError
from npeff.models.core import LABELS_KEY, forward_logits
from npeff.models.units import UnitMap, unit_modules


def loo_margins(engine: AblationEngine, batches: list[Mapping]) -> torch.Tensor:
    """Margins ``[|C|, n]`` with each unit ablated alone."""
    c = engine.units.n_units
    keep = ~torch.eye(c, dtype=torch.bool)
    return engine.margins(keep, batches)


def loo_attributions(base: torch.Tensor, loo: torch.Tensor) -> torch.Tensor:
    """LOO attributions ``[n, |C|]`` from base margins ``[n]`` and LOO margins ``[|C|, n]``."""
    return (base[None, :] - loo).T


def gp_attributions(model: nn.Module, unit_map: UnitMap, batches: list[Mapping]) -> torch.Tensor:
    """Gradient×parameter attributions ``[n, |C|]`` (Linear/conv units)."""
    mods = unit_modules(model, unit_map)
    if mods is None:
        raise NpeffUserError("the gradient×parameter baseline needs units on Linear/conv weights")
    index = {p: unit_map.param_units(p)[1] for p in mods}
    model.eval()
    out = []
    for batch in batches:
        b = int(batch[LABELS_KEY].shape[0])
        gate = torch.ones(b, unit_map.n_units + 1, requires_grad=True)
        handles = []
        for p, (mod, dim) in mods.items():
            idx = index[p]
            if dim == 0:
                conv = not isinstance(mod, nn.Linear)

                def hook(m, _inp, z, idx=idx, conv=conv, gate=gate, b=b):
                    g = gate[:, idx]  # [B, F]
                    shape = (
                        (b, g.shape[1]) + (1,) * (z.ndim - 2)
                        if conv
                        else ((b,) + (1,) * (z.ndim - 2) + (g.shape[1],))
                    )
                    g = g.view(shape).to(z.dtype)
                    if m.bias is None:
                        return z * g
                    bias = m.bias.view((1, -1) + (1,) * (z.ndim - 2)) if conv else m.bias
                    return (z - bias) * g + bias

                handles.append(mod.register_forward_hook(hook))
            else:

                def pre(_m, args, idx=idx, gate=gate, b=b):
                    x = args[0]
                    g = gate[:, idx].view((b,) + (1,) * (x.ndim - 2) + (-1,)).to(x.dtype)
                    return (x * g,) + tuple(args[1:])

                handles.append(mod.register_forward_pre_hook(pre))
        try:
            with torch.enable_grad():
                m = margin(forward_logits(model, batch), batch[LABELS_KEY])
                (grad,) = torch.autograd.grad(m.sum(), gate)
        finally:
            for h in handles:
                h.remove()
        out.append(grad[:, :-1].detach())
    return torch.cat(out)
