"""Units: the components COAR ablates (seed-systems.md §1.1), defined once for every method.

A unit is one output row of a chosen weight:

- ``neuron``: a row of an ``nn.Linear`` weight ``[out, in]`` (one output neuron);
- ``channel``: a row of a convolution weight ``[out, in, *kernel]`` (one output channel);
- ``head``: an attention head of an attention block: the rows of the query, key and value weights
  ``[H·d, E]`` that belong to head h and the columns ``[E, H·d]`` of the output projection that
  read it (HF BERT ``BertAttention`` or ``q_proj/k_proj/v_proj/out_proj`` blocks).

Units are chosen by a list of specs ``{"pattern": <fnmatch>, "granularity": neuron|channel|head}``
(a bare string is a pattern whose granularity follows from the weight's shape), or by a preset
name: ``neurons`` (every Linear weight but the last, i.e. the classifier), ``channels`` (every
conv weight), ``heads`` (every attention block); a model with a ``unit_preset_specs(preset)``
method returning specs overrides them (the TRACR model: ``neurons`` = MLP hidden units).
``neuron``/``channel`` patterns match parameter names (e.g. ``hidden.weight``,
``features.*.weight``); ``head`` patterns match module names (e.g.
``hf.bert.encoder.layer.*.attention``).

Ablating a unit zeroes its weight slices; biases are kept. :class:`UnitMap` holds, per unit, its
slices ``(parameter, dim, start, stop)``; :meth:`UnitMap.flat_indices` places them in a
:class:`~npeff.artifacts.layout.ParameterLayout` (for the NPEFF↔COAR comparison).
"""

from __future__ import annotations

import fnmatch
import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from npeff.artifacts.layout import ParameterLayout
from npeff.errors import NpeffUserError

GRANULARITIES = ("neuron", "channel", "head")
PRESETS = ("neurons", "channels", "heads")
_CONV = (nn.Conv1d, nn.Conv2d, nn.Conv3d)


@dataclass(frozen=True)
class UnitSlice:
    """Entries ``start:stop`` along dimension ``dim`` of parameter ``param``."""

    param: str
    dim: int
    start: int
    stop: int


@dataclass(frozen=True)
class UnitMap:
    """|C| units: ``names[c]`` (e.g. ``hidden.weight[3]``, ``...attention:head1``), their
    ``granularity`` and weight ``slices[c]``. Parameter shapes are kept for checks."""

    names: tuple[str, ...]
    granularity: tuple[str, ...]
    slices: tuple[tuple[UnitSlice, ...], ...]
    shapes: Mapping[str, tuple[int, ...]]

    def __len__(self) -> int:
        return len(self.names)

    @property
    def n_units(self) -> int:
        return len(self.names)

    @property
    def params(self) -> list[str]:
        """Parameter names that carry units, in first-use order."""
        out: dict[str, None] = {}
        for sl in self.slices:
            for s in sl:
                out.setdefault(s.param, None)
        return list(out)

    def param_units(self, param: str) -> tuple[int, torch.Tensor]:
        """``(dim, index)`` for a unit-carrying parameter: ``index`` int64 ``[shape[dim]]`` gives
        the unit that owns each position along ``dim`` (−1: none)."""
        dim, index = None, None
        for c, sl in enumerate(self.slices):
            for s in sl:
                if s.param != param:
                    continue
                if dim is None:
                    dim = s.dim
                    index = torch.full((self.shapes[param][dim],), -1, dtype=torch.long)
                index[s.start : s.stop] = c
        if dim is None:
            raise KeyError(f"parameter {param!r} carries no unit")
        return dim, index

    def flat_indices(self, layout: ParameterLayout, unit: int) -> torch.Tensor:
        """int64 positions of unit ``unit``'s weight entries in ``layout``'s flat vector."""
        pos = {n: i for i, n in enumerate(layout.names)}
        out = []
        for s in self.slices[unit]:
            if s.param not in pos:
                raise KeyError(
                    f"unit {self.names[unit]!r} lives in {s.param!r}, which the layout lacks"
                )
            i = pos[s.param]
            shape = layout.shapes[i]
            if tuple(shape) != tuple(self.shapes[s.param]):
                raise NpeffUserError(f"{s.param}: layout shape {shape} ≠ unit map shape")
            idx = torch.arange(layout.numel(i)).view(shape)
            out.append(idx.narrow(s.dim, s.start, s.stop - s.start).reshape(-1) + layout.offsets[i])
        return torch.cat(out)

    def unit_of_flat(self, layout: ParameterLayout) -> torch.Tensor:
        """int64 ``[layout.n_parameters]``: the unit owning each flat entry (−1: none)."""
        out = torch.full((layout.n_parameters,), -1, dtype=torch.long)
        for c in range(self.n_units):
            out[self.flat_indices(layout, c)] = c
        return out

    # -- serialisation ----------------------------------------------------------------------
    def to_json(self) -> str:
        return json.dumps(
            {
                "names": list(self.names),
                "granularity": list(self.granularity),
                "slices": [[[s.param, s.dim, s.start, s.stop] for s in sl] for sl in self.slices],
                "shapes": {k: list(v) for k, v in self.shapes.items()},
            }
        )

    @classmethod
    def from_json(cls, text: str) -> UnitMap:
        d = json.loads(text)
        return cls(
            tuple(d["names"]),
            tuple(d["granularity"]),
            tuple(
                tuple(UnitSlice(p, int(a), int(b), int(e)) for p, a, b, e in sl)
                for sl in d["slices"]
            ),
            {k: tuple(v) for k, v in d["shapes"].items()},
        )

    def check_model(self, model: nn.Module) -> None:
        """Fail clearly when ``model`` lacks a unit parameter or has another shape."""
        params = dict(model.named_parameters())
        for name, shape in self.shapes.items():
            if name not in params:
                raise NpeffUserError(
                    f"the unit map needs parameter {name!r}, which this model does not have: "
                    "the attributions were computed on another model"
                )
            if tuple(params[name].shape) != tuple(shape):
                raise NpeffUserError(
                    f"parameter {name!r} has shape {tuple(params[name].shape)} here but "
                    f"{tuple(shape)} in the unit map: the attributions belong to another model"
                )


# ----------------------------------------------------------------------------------------------
def _spec_list(units: Any) -> list[dict[str, Any]]:
    """Normalise ``units`` into a list of ``{"pattern", "granularity"}`` dicts."""
    try:
        from omegaconf import DictConfig, ListConfig, OmegaConf

        if isinstance(units, DictConfig | ListConfig):
            units = OmegaConf.to_container(units, resolve=True)
    except ImportError:  # pragma: no cover
        pass
    if units is None:
        raise NpeffUserError(
            "no units given: pass units=<preset> (neurons, channels, heads) or a list of "
            "{pattern, granularity} specs"
        )
    if isinstance(units, str | Mapping):
        units = [units]
    out = []
    for u in units:
        if isinstance(u, str):
            out.append({"pattern": u, "granularity": None})
        elif isinstance(u, Mapping):
            extra = sorted(set(u) - {"pattern", "granularity"})
            if extra or "pattern" not in u:
                raise NpeffUserError(
                    f"a unit spec has keys 'pattern' and 'granularity'; got {dict(u)}"
                )
            g = u.get("granularity")
            if g is not None and g not in GRANULARITIES:
                raise NpeffUserError(
                    f"unknown unit granularity {g!r} in {dict(u)}; available: {list(GRANULARITIES)}"
                )
            out.append({"pattern": str(u["pattern"]), "granularity": g})
        else:
            raise TypeError(f"a unit spec is a string or a mapping, got {type(u).__name__}")
    return out


def _weight_modules(model: nn.Module) -> dict[str, nn.Module]:
    """Parameter name ``<module>.weight`` → its module, for Linear and conv modules."""
    return {
        (f"{n}.weight" if n else "weight"): m
        for n, m in model.named_modules()
        if isinstance(m, (nn.Linear, *_CONV))
    }


def _attention_parts(module: nn.Module) -> tuple[list[str], str, int] | None:
    """(q/k/v weight names, output weight name, n_heads) relative to an attention block."""
    self_attn = getattr(module, "self", None)
    output = getattr(module, "output", None)
    if (
        self_attn is not None
        and all(
            isinstance(getattr(self_attn, k, None), nn.Linear) for k in ("query", "key", "value")
        )
        and isinstance(getattr(output, "dense", None), nn.Linear)
    ):
        heads = int(
            getattr(self_attn, "num_attention_heads", 0) or self_attn.config.num_attention_heads
        )
        return [f"self.{k}.weight" for k in ("query", "key", "value")], "output.dense.weight", heads
    names = [
        k for k in ("q_proj", "k_proj", "v_proj") if isinstance(getattr(module, k, None), nn.Linear)
    ]
    out = next(
        (k for k in ("out_proj", "o_proj") if isinstance(getattr(module, k, None), nn.Linear)), None
    )
    if len(names) == 3 and out is not None:
        heads = getattr(module, "num_heads", None) or getattr(module, "num_attention_heads", None)
        if heads:
            return [f"{k}.weight" for k in names], f"{out}.weight", int(heads)
    return None


def _preview(names: list[str], k: int = 25) -> str:
    shown = ", ".join(names[:k])
    return shown + (f", ... ({len(names)} in all)" if len(names) > k else "")


def _preset_specs(model: nn.Module, preset: str) -> list[dict[str, Any]]:
    # a model may define its own presets (e.g. TracrTransformer: neurons = MLP hidden units)
    own = getattr(model, "unit_preset_specs", None)
    specs = own(preset) if callable(own) else None
    if specs is not None:
        return list(specs)
    mods = _weight_modules(model)
    if preset == "neurons":
        lin = [n for n, m in mods.items() if isinstance(m, nn.Linear)]
        if len(lin) < 2:
            raise NpeffUserError(
                "preset 'neurons' needs at least two Linear layers (the last is the classifier)"
            )
        return [{"pattern": n, "granularity": "neuron"} for n in lin[:-1]]
    if preset == "channels":
        conv = [n for n, m in mods.items() if isinstance(m, _CONV)]
        if not conv:
            raise NpeffUserError("preset 'channels' found no convolution in the model")
        return [{"pattern": n, "granularity": "channel"} for n in conv]
    attn = [n for n, m in model.named_modules() if _attention_parts(m) is not None]
    if not attn:
        raise NpeffUserError(
            "preset 'heads' found no attention block (BERT-style or q_proj/out_proj)"
        )
    return [{"pattern": n, "granularity": "head"} for n in attn]


def build_unit_map(model: nn.Module, units: Any) -> UnitMap:
    """The :class:`UnitMap` of ``model`` for ``units`` (a preset name or a list of specs).

    Errors (before any work): an unknown preset or granularity, a pattern that matches no
    weight, a granularity that does not fit the matched weight, overlapping units.
    """
    if isinstance(units, str) and not any(ch in units for ch in "*?[.") and units not in PRESETS:
        params = [n for n, _ in model.named_parameters()]
        if units not in params:
            raise NpeffUserError(
                f"unknown unit pattern {units!r}: not a preset ({', '.join(PRESETS)}) and no "
                f"parameter has that name; parameters: {_preview(params)}"
            )
    if isinstance(units, str) and units in PRESETS:
        specs = _preset_specs(model, units)
    else:
        specs = _spec_list(units)
    params = dict(model.named_parameters())
    names: list[str] = []
    gran: list[str] = []
    slices: list[tuple[UnitSlice, ...]] = []
    owner: dict[str, int] = {}  # parameter → the dim it carries units along
    shapes: dict[str, tuple[int, ...]] = {}

    def claim(param: str, dim: int) -> None:
        if param in owner:
            raise NpeffUserError(
                f"parameter {param!r} is matched by more than one unit spec; units must not overlap"
            )
        owner[param] = dim
        shapes[param] = tuple(int(s) for s in params[param].shape)

    for spec in specs:
        pat, g = spec["pattern"], spec["granularity"]
        if g == "head":
            blocks = [(n, m) for n, m in model.named_modules() if n and fnmatch.fnmatchcase(n, pat)]
            blocks = [(n, m, _attention_parts(m)) for n, m in blocks]
            if not blocks:
                mod_names = [n for n, _ in model.named_modules() if n]
                raise NpeffUserError(
                    f"head pattern {pat!r} matches no module; head patterns match attention block "
                    f"names, e.g. {_preview([n for n, m in model.named_modules() if _attention_parts(m)]) or 'none in this model'}; modules: {_preview(mod_names)}"
                )
            bad = [n for n, _, parts in blocks if parts is None]
            if bad:
                raise NpeffUserError(
                    f"head pattern {pat!r} matches {bad[:5]}, which are not attention blocks "
                    "(BERT-style self.query/key/value + output.dense, or q/k/v_proj + out_proj)"
                )
            for n, _, (qkv, out, heads) in blocks:
                qkv = [f"{n}.{w}" for w in qkv]
                out = f"{n}.{out}"
                width = params[qkv[0]].shape[0]
                if width % heads:
                    raise NpeffUserError(
                        f"{qkv[0]} has {width} rows, not divisible by {heads} heads"
                    )
                d = width // heads
                for w in qkv:
                    claim(w, 0)
                claim(out, 1)
                for h in range(heads):
                    sl = [UnitSlice(w, 0, h * d, (h + 1) * d) for w in qkv]
                    sl.append(UnitSlice(out, 1, h * d, (h + 1) * d))
                    names.append(f"{n}:head{h}")
                    gran.append("head")
                    slices.append(tuple(sl))
            continue
        matched = [n for n in params if fnmatch.fnmatchcase(n, pat)]
        weights = [n for n in matched if params[n].ndim >= 2]  # biases/norms carry no unit
        if not weights:
            all_w = [n for n, p in params.items() if p.ndim >= 2]
            what = f"only {matched[:5]} (no weight with rows)" if matched else "no weight"
            raise NpeffUserError(
                f"unit pattern {pat!r} matches {what}; weights of this model: {_preview(all_w)}"
            )
        for n in weights:
            p = params[n]
            kind = g
            if kind is None:
                kind = "channel" if p.ndim >= 3 else "neuron"
            if kind == "neuron" and p.ndim != 2:
                raise NpeffUserError(
                    f"granularity 'neuron' needs a 2-D Linear weight; {n!r} is {tuple(p.shape)}"
                )
            if kind == "channel" and p.ndim < 3:
                raise NpeffUserError(
                    f"granularity 'channel' needs a conv weight; {n!r} is {tuple(p.shape)}"
                )
            claim(n, 0)
            for r in range(p.shape[0]):
                names.append(f"{n}[{r}]")
                gran.append(kind)
                slices.append((UnitSlice(n, 0, r, r + 1),))
    if not names:
        raise NpeffUserError(f"the unit specs {specs} select no unit")
    return UnitMap(tuple(names), tuple(gran), tuple(slices), shapes)


def unit_modules(model: nn.Module, unit_map: UnitMap) -> dict[str, tuple[nn.Module, int]]:
    """For activation masking: unit parameter → (its Linear/conv module, dim); None when some
    unit parameter is not the weight of such a module (then only weight masking applies)."""
    mods = _weight_modules(model)
    out = {}
    for p in unit_map.params:
        dim, _ = unit_map.param_units(p)
        m = mods.get(p)
        if m is None or (dim == 1 and not isinstance(m, nn.Linear)) or dim > 1:
            return None  # type: ignore[return-value]
        out[p] = (m, dim)
    return out


__all__ = [
    "GRANULARITIES",
    "PRESETS",
    "UnitMap",
    "UnitSlice",
    "build_unit_map",
    "unit_modules",
]


def unit_membership(owner, n_units: int):
    """scipy csr ``[m', n_units]`` 0/1: entry ``(i, c)`` is 1 when column i belongs to unit c.

    ``owner`` int ``[m']``: the unit of each column (−1: none), e.g.
    ``UnitMap.unit_of_flat(layout)[new_to_old_col_indices]``."""
    import numpy as np
    import scipy.sparse as sp

    owner = np.asarray(owner, dtype=np.int64).reshape(-1)
    if owner.size and owner.max() >= n_units:
        raise NpeffUserError(
            f"a column belongs to unit {owner.max()}, but there are {n_units} units"
        )
    keep = np.flatnonzero(owner >= 0)
    return sp.csr_matrix(
        (np.ones(len(keep)), (keep, owner[keep])), shape=(owner.shape[0], int(n_units))
    )


def mass_on_units(vectors, membership, kind: str = "lrm", share: bool = True):
    """float64 ``[r, U]``: each component's pseudo-Fisher mass on each unit (a set of columns).

    ``vectors`` ``[r, m']`` (dense, or scipy sparse such as a sparsified D-NPEFF H): the rows of G
    (LRM; an entry's mass is g²) or of H (``kind="diag"``; mass = max(h, 0)) over m' columns.
    ``membership`` ``[m', U]`` (0/1, dense or sparse; :func:`unit_membership` from an owner
    vector; columns may overlap): which columns each unit holds. ``share``: divide by the
    component's whole mass (units or not, so a row sums to the fraction of its mass on units; a
    component without mass gets 0), else the raw mass.
    """
    import numpy as np
    import scipy.sparse as sp

    if sp.issparse(vectors):
        v = sp.csr_matrix(vectors, dtype=np.float64)
        mass = v.multiply(v) if kind != "diag" else v.maximum(0)
        mass = sp.csr_matrix(mass)
        total = np.asarray(mass.sum(1)).reshape(-1, 1)
    else:
        v = np.asarray(vectors, dtype=np.float64)
        mass = v * v if kind != "diag" else np.clip(v, 0, None)
        total = mass.sum(1, keepdims=True)
    onehot = sp.csr_matrix(membership, dtype=np.float64)
    if onehot.shape[0] != v.shape[1]:
        raise NpeffUserError(
            f"{v.shape[1]} component columns but {onehot.shape[0]} columns in the unit "
            "membership: pass the owners of the kept columns (new_to_old_col_indices)"
        )
    out = (mass @ onehot).toarray() if sp.issparse(mass) else np.asarray((onehot.T @ mass.T).T)
    return out / np.where(total > 0, total, 1.0) if share else out
