"""Several perturbed parameter sets in one batched forward.

:class:`StackedForward` evaluates P parameter sets θ + s_p·v_p of the perturbed parameters in one
forward: ``torch.func.functional_call`` under ``vmap`` over the stacked sets [P, *shape], the
inputs (and any cached prefix outputs, npeff/perturb/prefix_cache.py) shared by all P. Its
:meth:`forward_fn` is a ``ForwardFn`` returning the P sets' logits side by side, [B, P·C], so the
example caches batch and concatenate it like any forward; :func:`split_sets` gives [B, P, C].

The sets are formed as :class:`~npeff.perturb.vector.ModelPerturber` forms them
(θ + s·v cast to the parameter's dtype), and the first use is checked against one forward per set;
a model whose forward vmap cannot batch (or that disagrees) falls back to the sequential path.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

import torch
from torch import nn
from torch.func import functional_call, vmap

from npeff.errors import NpeffUserError
from npeff.perturb.examples import ForwardFn
from npeff.perturb.vector import ModelPerturber, ParameterVector

log = logging.getLogger(__name__)

CHECK_RTOL = 1e-5


class _Call(nn.Module):
    """``forward(batch)`` = ``fn(model, batch)`` (lets functional_call drive any ForwardFn)."""

    def __init__(self, model: nn.Module, fn: ForwardFn):
        super().__init__()
        self.model = model
        self.fn = fn

    def forward(self, batch):
        return self.fn(self.model, batch)


def split_sets(logits: torch.Tensor, n_sets: int) -> torch.Tensor:
    """[B, P·C] from :meth:`StackedForward.forward_fn` → [B, P, C]."""
    return logits.reshape(logits.shape[0], n_sets, -1)


class StackedForward:
    """P perturbed parameter sets per forward (``max_sets`` at most) for one model."""

    def __init__(self, perturber: ModelPerturber, forward: ForwardFn, max_sets: int):
        if max_sets < 1:
            raise NpeffUserError(f"sets per forward must be ≥ 1, got {max_sets}")
        self.perturber = perturber
        self.max_sets = int(max_sets)
        self.call = _Call(perturber.model, forward)
        self.usable: bool | None = None if max_sets > 1 else False  # None: not checked yet

    def stacked(
        self, vectors: Sequence[ParameterVector], scales: Sequence[float]
    ) -> dict[str, torch.Tensor]:
        """{"model.<name>": [P, *shape]}: θ + scale_p·vector_p of every perturbed parameter."""
        out = {}
        for name, theta in self.perturber.original.items():
            sets = [
                theta + s * v.named()[name].to(device=theta.device, dtype=theta.dtype)
                for v, s in zip(vectors, scales)
            ]
            out[f"model.{name}"] = torch.stack(sets)
        return out

    def forward_fn(self, vectors: Sequence[ParameterVector], scales: Sequence[float]) -> ForwardFn:
        """A ForwardFn whose logits are the P sets' side by side [B, P·C]."""
        params = self.stacked(vectors, scales)
        call = self.call

        def fn(model, batch):
            with torch.no_grad():
                lg = vmap(lambda p: functional_call(call, p, (batch,)))(params)  # [P, B, C]
            return lg.transpose(0, 1).reshape(lg.shape[1], -1)

        return fn

    def check(self, batch: dict, vectors, scales) -> bool:
        """Compare one stacked forward on ``batch`` with one forward per set (once); False (and
        the sequential path from then on) when vmap fails or the logits differ."""
        if self.usable is not None:
            return self.usable
        try:
            got = split_sets(
                self.forward_fn(vectors, scales)(self.perturber.model, batch), len(scales)
            )
            ok = True
            for p, (v, s) in enumerate(zip(vectors, scales)):
                with self.perturber.perturbed(v, s), torch.no_grad():
                    ref = self.call(batch).double()
                err = float((got[:, p].double() - ref).abs().max())
                ok = ok and err <= CHECK_RTOL * max(float(ref.abs().max()), 1e-30)
            if not ok:
                log.info("stacked perturbed forwards disagree with single ones; not stacking")
        except Exception as e:  # noqa: BLE001 — an op vmap cannot batch: the sequential path
            log.info("stacked perturbed forwards unavailable (%s); not stacking", e)
            ok = False
        self.usable = ok
        return ok
