"""Per-example, per-class gradients of log-probabilities with torch.func (algorithm.md §1.1).

One flat parameter vector θ [m] (the selected parameters in ``named_parameters()`` order, each
flattened row-major) is split into views and fed to ``functional_call``; every example is run as a
batch of 1 under ``vmap``, and ``jacrev`` gives the gradient of each requested class's log p_c.
"""

from __future__ import annotations

import fnmatch
import sys
from collections.abc import Mapping, Sequence

import torch
from torch import nn
from torch.func import functional_call, jacrev, vmap

from npeff.artifacts.layout import ParameterLayout
from npeff.errors import NpeffUserError

LABELS_KEY = "labels"


def select_named_parameters(
    model: nn.Module,
    include: Sequence[str] | None = None,
    exclude: Sequence[str] | None = None,
) -> list[tuple[str, nn.Parameter]]:
    """Parameters of ``model`` whose names match ``include`` and not ``exclude`` (fnmatch).

    Default: all parameters with ``requires_grad``, in ``named_parameters()`` order. Uses
    ``npeff.models.select_parameters`` when the models package provides it.
    """
    try:
        from npeff.models import select_parameters  # type: ignore[attr-defined]
    except ImportError:
        select_parameters = None
    if select_parameters is not None:
        chosen = select_parameters(model, include=include, exclude=exclude)
    else:
        chosen = []
        for name, p in model.named_parameters():
            if include is None and not p.requires_grad:
                continue
            if include is not None and not any(fnmatch.fnmatchcase(name, pat) for pat in include):
                continue
            if exclude is not None and any(fnmatch.fnmatchcase(name, pat) for pat in exclude):
                continue
            chosen.append((name, p))
    if not chosen:
        raise NpeffUserError(
            f"no parameters selected (include={include}, exclude={exclude}); "
            "check the patterns against model.named_parameters()"
        )
    return list(chosen)


def model_inputs(batch: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Every key of a batch except ``labels`` (the forward contract, design.md §3)."""
    return {k: v for k, v in batch.items() if k != LABELS_KEY}


def output_logits(out) -> torch.Tensor:
    """Logits from a model output: a tensor, or an object/dict with ``logits``."""
    if isinstance(out, torch.Tensor):
        return out
    if isinstance(out, Mapping) and "logits" in out:
        return out["logits"]
    if hasattr(out, "logits"):
        return out.logits
    if isinstance(out, (tuple, list)) and out and isinstance(out[0], torch.Tensor):
        return out[0]
    raise TypeError(f"model output of type {type(out).__name__} has no logits")


def _is_hf_model(model: nn.Module) -> bool:
    if "transformers" not in sys.modules:  # no HF model can exist; skip a slow import
        return False
    try:
        from transformers import PreTrainedModel
    except ImportError:  # pragma: no cover
        return False
    return isinstance(model, PreTrainedModel)


class PerExampleGrads:
    """Per-example class-row gradients of a classifier with respect to selected parameters.

    ``named_params``: the selected (name, parameter) pairs; the others and all buffers are held
    constant. The model must be in eval mode (dropout and batch statistics break per-example
    semantics and vmap).
    """

    def __init__(self, model: nn.Module, named_params: Sequence[tuple[str, nn.Parameter]]):
        if model.training:
            raise NpeffUserError(
                "the model is in training mode; call model.eval() first (dropout and BatchNorm "
                "batch statistics make per-example Fishers ill-defined and break vmap)"
            )
        self.model = model
        self.names = [n for n, _ in named_params]
        self.layout = ParameterLayout.from_named_tensors(named_params)
        chosen = set(self.names)
        # Tied aliases are left out: functional_call (tie_weights=True) maps them to the one name.
        self.constants = {n: p.detach() for n, p in model.named_parameters() if n not in chosen}
        self.constants.update(dict(model.named_buffers()))
        self.theta = torch.cat([p.detach().reshape(-1) for _, p in named_params])
        self.sizes = [self.layout.numel(i) for i in range(len(self.names))]
        self.hf = _is_hf_model(model)

    @property
    def n_parameters(self) -> int:
        return self.layout.n_parameters

    def logits(self, batch: Mapping[str, torch.Tensor]) -> torch.Tensor:
        """Batched forward without gradients → logits [B, C_model]."""
        with torch.no_grad():
            return output_logits(self.model(**model_inputs(batch)))

    def _one_logits(self, theta: torch.Tensor, inputs: dict[str, torch.Tensor]) -> torch.Tensor:
        """Logits [C_model] of one example (inputs without batch dim) as a function of θ [m]."""
        tensors = {
            name: piece.view(shape)
            for name, piece, shape in zip(
                self.names, torch.split(theta, self.sizes), self.layout.shapes
            )
        }
        batch1 = {k: v.unsqueeze(0) for k, v in inputs.items()}
        mask = batch1.get("attention_mask")
        if self.hf and mask is not None and mask.ndim == 2:
            # transformers inspects a 2-D mask with data-dependent calls that vmap refuses;
            # an additive 4-D mask [1, 1, 1, L] is used as is.
            keep = mask[:, None, None, :].to(theta.dtype)
            batch1["attention_mask"] = (1.0 - keep) * torch.finfo(theta.dtype).min
        out = functional_call(self.model, (tensors, self.constants), (), batch1, strict=False)
        return output_logits(out)[0]

    def class_grads(
        self,
        batch: Mapping[str, torch.Tensor],
        classes: torch.Tensor,
        n_logits: int,
        weights: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """w_bc·∇_θ log p_c(x_b) for the classes ``classes`` int [B, k] (of ``n_logits``) → [B, k, m].

        ``weights`` [B, k] (default 1) are constants folded into the backward pass, which saves
        a pass over the [B, k, m] result. The class is picked with a (weighted) one-hot dot
        product (a vmapped index into log-probs fails).
        """

        def logp(theta, inp, select):
            return select @ torch.log_softmax(self._one_logits(theta, inp), dim=-1)

        select = torch.nn.functional.one_hot(classes, n_logits).to(self.theta.dtype)
        if weights is not None:
            select = select * weights[..., None].to(select.dtype)
        return vmap(jacrev(logp), in_dims=(None, 0, 0))(self.theta, model_inputs(batch), select)
