"""The parameter layout: which named parameters make up the flat parameter vector, and where.

Parameter order (design.md §3): the selected ``named_parameters()`` in model order, each flattened
row-major, concatenated. Every PEF and decomposition file stores its layout so a direction in
parameter space can be put back on the model.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import dataclass

import torch

from npeff.errors import NpeffUserError


@dataclass(frozen=True)
class ParameterLayout:
    """Names, shapes and flat offsets of the selected parameters.

    ``offsets[i]`` is where parameter ``names[i]`` starts in the flat vector of length
    ``n_parameters``; it occupies ``numel(shapes[i])`` entries.
    """

    names: tuple[str, ...]
    shapes: tuple[tuple[int, ...], ...]
    offsets: tuple[int, ...]
    n_parameters: int

    @classmethod
    def from_named_tensors(cls, named: Iterable[tuple[str, torch.Tensor]]) -> ParameterLayout:
        names, shapes, offsets = [], [], []
        offset = 0
        for name, tensor in named:
            names.append(name)
            shapes.append(tuple(int(s) for s in tensor.shape))
            offsets.append(offset)
            offset += int(tensor.numel())
        return cls(tuple(names), tuple(shapes), tuple(offsets), offset)

    def numel(self, i: int) -> int:
        n = 1
        for s in self.shapes[i]:
            n *= s
        return n

    def split(self, flat: torch.Tensor) -> dict[str, torch.Tensor]:
        """Split a flat vector ``[n_parameters]`` into ``{name: tensor of its shape}`` (views)."""
        if flat.ndim != 1 or flat.shape[0] != self.n_parameters:
            raise NpeffUserError(
                f"expected a flat vector of {self.n_parameters} entries, got shape {tuple(flat.shape)}"
            )
        return {
            name: flat[off : off + self.numel(i)].view(shape)
            for i, (name, shape, off) in enumerate(zip(self.names, self.shapes, self.offsets))
        }

    def flatten(self, tensors: dict[str, torch.Tensor]) -> torch.Tensor:
        """Concatenate ``{name: tensor}`` in layout order into a flat vector ``[n_parameters]``."""
        missing = [n for n in self.names if n not in tensors]
        if missing:
            raise KeyError(f"tensors missing for parameters {missing[:5]}")
        return torch.cat([tensors[n].reshape(-1) for n in self.names])

    def to_json(self) -> str:
        return json.dumps(
            {
                "names": list(self.names),
                "shapes": [list(s) for s in self.shapes],
                "offsets": list(self.offsets),
                "n_parameters": self.n_parameters,
            }
        )

    @classmethod
    def from_json(cls, text: str) -> ParameterLayout:
        d = json.loads(text)
        return cls(
            tuple(d["names"]),
            tuple(tuple(s) for s in d["shapes"]),
            tuple(d["offsets"]),
            int(d["n_parameters"]),
        )
