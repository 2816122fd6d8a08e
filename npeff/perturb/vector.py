"""Parameter vectors on a :class:`ParameterLayout`, and putting them on a model.

A direction found in a decomposition's reduced column space (m' columns, ``new_to_old_col_indices``)
is scattered into the full flat parameter vector (m entries), which the layout splits into named
tensors of the model's parameter shapes.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from npeff.artifacts.layout import ParameterLayout
from npeff.errors import NpeffUserError


@dataclass
class ParameterVector:
    """A vector in parameter space: ``flat`` [m] on ``layout`` (m = ``layout.n_parameters``)."""

    layout: ParameterLayout
    flat: torch.Tensor

    def __post_init__(self) -> None:
        if self.flat.ndim != 1 or self.flat.shape[0] != self.layout.n_parameters:
            raise NpeffUserError(
                f"flat vector has shape {tuple(self.flat.shape)}, the layout has "
                f"{self.layout.n_parameters} parameters"
            )

    @classmethod
    def zeros(cls, layout: ParameterLayout, dtype: torch.dtype = torch.float32) -> ParameterVector:
        return cls(layout, torch.zeros(layout.n_parameters, dtype=dtype))

    @classmethod
    def from_reduced(
        cls,
        layout: ParameterLayout,
        values: np.ndarray | torch.Tensor,
        col_indices: np.ndarray | torch.Tensor,
        dtype: torch.dtype = torch.float32,
    ) -> ParameterVector:
        """Scatter ``values`` [m'] onto parameter indices ``col_indices`` [m']; zeros elsewhere."""
        values = torch.as_tensor(np.asarray(values), dtype=dtype).reshape(-1)
        idx = torch.as_tensor(np.asarray(col_indices), dtype=torch.long).reshape(-1)
        if values.shape[0] != idx.shape[0]:
            raise NpeffUserError(
                f"{values.shape[0]} reduced values but {idx.shape[0]} column indices; "
                "the decomposition's G/H rows and new_to_old_col_indices must have the same length"
            )
        if idx.numel() and (int(idx.min()) < 0 or int(idx.max()) >= layout.n_parameters):
            raise NpeffUserError(
                f"column indices fall outside [0, {layout.n_parameters}); the decomposition was "
                "made for a different parameter layout"
            )
        flat = torch.zeros(layout.n_parameters, dtype=dtype)
        flat[idx] = values
        return cls(layout, flat)

    @classmethod
    def from_model(cls, model: nn.Module, layout: ParameterLayout) -> ParameterVector:
        """The model's current values of the layout's parameters, flattened (a copy)."""
        params = bind_parameters(model, layout)
        return cls(layout, layout.flatten({n: p.detach() for n, p in params.items()}).clone())

    def named(self) -> dict[str, torch.Tensor]:
        """``{name: tensor of the parameter's shape}`` (views of ``flat``)."""
        return self.layout.split(self.flat)

    def norm(self) -> float:
        return float(torch.linalg.vector_norm(self.flat.double()))

    def normalized(self) -> ParameterVector:
        n = self.norm()
        if not n > 0:
            raise NpeffUserError("cannot normalize a zero parameter vector")
        return ParameterVector(self.layout, self.flat / n)

    def __mul__(self, scale: float) -> ParameterVector:
        return ParameterVector(self.layout, self.flat * scale)

    __rmul__ = __mul__

    def __neg__(self) -> ParameterVector:
        return ParameterVector(self.layout, -self.flat)


def bind_parameters(model: nn.Module, layout: ParameterLayout) -> dict[str, nn.Parameter]:
    """The model's parameters named in ``layout``, in layout order; checks names and shapes."""
    named = dict(model.named_parameters())
    out = {}
    for name, shape in zip(layout.names, layout.shapes):
        if name not in named:
            raise KeyError(
                f"parameter {name!r} of the decomposition's layout is not in the model; "
                "use the checkpoint the PEFs were computed from"
            )
        p = named[name]
        if tuple(p.shape) != tuple(shape):
            raise NpeffUserError(
                f"parameter {name!r} has shape {tuple(p.shape)} in the model but {tuple(shape)} "
                "in the layout; use the checkpoint the PEFs were computed from"
            )
        out[name] = p
    return out


class ModelPerturber:
    """Sets a model's layout parameters to θ + s·v and back to θ exactly.

    A copy of the original values θ is taken once; :meth:`apply` writes θ + s·v from that copy and
    :meth:`restore` copies θ back, so any sequence of perturbations ends bitwise at θ (never by
    subtracting, which would round).
    """

    def __init__(self, model: nn.Module, layout: ParameterLayout):
        self.model = model
        self.layout = layout
        self.params = bind_parameters(model, layout)
        self.original = {n: p.detach().clone() for n, p in self.params.items()}
        self.is_perturbed = False

    @torch.no_grad()
    def apply(self, vector: ParameterVector, scale: float = 1.0) -> None:
        """Set the parameters to θ + scale·vector (from the stored θ, whatever they are now)."""
        if vector.layout.n_parameters != self.layout.n_parameters:
            raise NpeffUserError("the vector's layout does not match the model's layout")
        for name, delta in vector.named().items():
            p = self.params[name]
            p.copy_(self.original[name] + scale * delta.to(device=p.device, dtype=p.dtype))
        self.is_perturbed = True

    @torch.no_grad()
    def restore(self) -> None:
        """Copy the stored θ back into the model."""
        for name, p in self.params.items():
            p.copy_(self.original[name])
        self.is_perturbed = False

    @contextlib.contextmanager
    def perturbed(self, vector: ParameterVector, scale: float = 1.0) -> Iterator[None]:
        """``with perturber.perturbed(v, s):`` the model holds θ + s·v inside, θ after."""
        self.apply(vector, scale)
        try:
            yield
        finally:
            self.restore()
