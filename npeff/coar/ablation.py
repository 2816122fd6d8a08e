"""Batched unit ablations: margins of many masked models per forward, no model copy per mask.

A keep-mask ``keep`` bool ``[M, |C|]`` says which units stay; an ablated unit has its weight
slices zeroed (biases kept). Three implementations give the same numbers:

- ``activation`` (the default when every unit weight belongs to a Linear/conv module): zeroing
  output rows of a weight equals multiplying that module's output, before its bias, by the keep
  mask; zeroing input columns (an attention head's output-projection columns) equals masking the
  module's input. Forward hooks do this for all M masks at once: the batch is expanded from B to
  M·B rows at the first masked module (``lazy``; everything before it runs once), or up front
  (``upfront``, for models whose other inputs must match the expanded batch, e.g. BERT's
  attention mask). ``lazy`` is tried first and checked once against the loop reference.
  Before it, ``carry``: the masked module's output stays unexpanded and the keep-mask is carried
  through the per-channel (per-feature) modules that follow it (eval BatchNorm, elementwise
  activations, pooling, eval dropout), together with the per-channel value an ablated unit has
  there (its bias image pushed through the same modules: after eval BatchNorm that is BN's
  shift, not 0); the batch is expanded (``where(keep, x, fill)``) only at the next other module
  (a Linear/conv, a Flatten, ...). Same numbers as the loop, without paying the per-channel
  modules M times.
- ``vmap``: ``torch.func.functional_call`` under ``vmap`` over masked weight tensors (any
  parameter, e.g. embedding rows).
- :func:`loop_margins`: the reference: zero the slices in place, run, restore; one mask at a time.

``margin(logits, labels)`` is the correct-class margin: correct logit minus the largest other.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterable, Mapping

import torch
from torch import nn

from npeff.errors import NpeffUserError
from npeff.models.core import LABELS_KEY, forward_logits, model_inputs
from npeff.models.units import UnitMap, unit_modules

METHODS = ("auto", "activation", "vmap")


def margin(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Correct-class margin ``[..., B]`` of logits ``[..., B, K]`` and labels ``[B]``."""
    lab = labels.to(logits.device).expand(logits.shape[:-1])
    correct = logits.gather(-1, lab.unsqueeze(-1)).squeeze(-1)
    other = logits.scatter(-1, lab.unsqueeze(-1), float("-inf")).amax(-1)
    return correct - other


def collect_batches(loader: Iterable[Mapping[str, torch.Tensor]], device=None) -> list[dict]:
    """The loader's batches held in memory (once), as dicts of tensors on ``device``."""
    out = []
    for b in loader:
        out.append({k: (v.to(device) if isinstance(v, torch.Tensor) else v) for k, v in b.items()})
    if not out:
        raise NpeffUserError("the loader yields no batch: COAR needs at least one example")
    return out


def _ext(keep: torch.Tensor, dtype) -> torch.Tensor:
    """``[M, |C|+1]`` float keep mask with a trailing always-kept column (index −1)."""
    ones = torch.ones(keep.shape[0], 1, dtype=dtype, device=keep.device)
    return torch.cat([keep.to(dtype), ones], dim=1)


class AblationEngine:
    """Margins (or logits) of a model under many keep-masks at once.

    Args:
        model: the model (eval mode is set; weights are never modified except inside
            :func:`loop_margins`).
        unit_map: the units (from :func:`npeff.models.units.build_unit_map`).
        method: ``auto``, ``activation`` or ``vmap`` (see module docstring).
        masks_per_forward: masks evaluated in one forward (bounds memory: activations grow ×M).
    """

    def __init__(
        self,
        model: nn.Module,
        unit_map: UnitMap,
        *,
        method: str = "auto",
        masks_per_forward: int = 32,
    ):
        if method not in METHODS:
            raise NpeffUserError(f"unknown ablation method {method!r}; available: {list(METHODS)}")
        unit_map.check_model(model)
        self.model = model.eval()
        self.units = unit_map
        self.masks_per_forward = max(1, int(masks_per_forward))
        mods = unit_modules(model, unit_map)
        if method == "auto":
            method = "activation" if mods is not None else "vmap"
        if method == "activation" and mods is None:
            raise NpeffUserError(
                "method='activation' needs every unit weight to be a Linear/conv module's weight; "
                "use method='vmap'"
            )
        self.method = method
        self._mods = mods
        self._index = {p: unit_map.param_units(p) for p in unit_map.params}
        self._expand = "carry"
        self._checked = False

    # -- activation masking ---------------------------------------------------------------
    @contextlib.contextmanager
    def _hooks(self, state: dict):
        handles = []
        if state["mode"] == "carry":  # first, so a carried mask is expanded before other hooks
            for mod in self.model.modules():
                if next(mod.children(), None) is None:  # leaf modules only
                    handles.append(mod.register_forward_pre_hook(self._carry_pre_hook(state)))
                    if _per_channel(mod) is not None:
                        handles.append(mod.register_forward_hook(self._carry_hook(state)))
        for p, (mod, dim) in self._mods.items():
            idx = self._index[p][1]
            if dim == 0:
                handles.append(mod.register_forward_hook(self._out_hook(mod, idx, state)))
            else:
                handles.append(mod.register_forward_pre_hook(self._in_hook(idx, state)))
        try:
            yield
        finally:
            for h in handles:
                h.remove()

    @staticmethod
    def _grouped(t: torch.Tensor, state: dict) -> torch.Tensor:
        """``t [N, ...]`` as ``[M, B, ...]`` (N = B: broadcast view; N = M·B: a view)."""
        m, b = state["M"], state["B"]
        if t.shape[0] == b:
            state["expanded"] = True
            return t.unsqueeze(0)
        if t.shape[0] == m * b:
            return t.view(m, b, *t.shape[1:])
        raise RuntimeError(f"unexpected batch size {t.shape[0]} (B={b}, M={m}) in a masked module")

    # carry mode: the pending (unexpanded) output of a masked module and its keep-mask
    @staticmethod
    def _expand_pending(state: dict) -> torch.Tensor:
        """``where(keep, x, fill)`` of the pending tensor, as ``[M·B, ...]``."""
        p = state.pop("pending")
        t, rows = p["t"], p["rows"] > 0.5  # [M, F] bool
        m, b = state["M"], state["B"]
        g = AblationEngine._grouped(t, state)  # [M|1, B, ...]
        if p["conv"]:
            mask = rows.view((m, 1, rows.shape[1]) + (1,) * (t.ndim - 2))
        else:
            mask = rows.view((m,) + (1,) * (t.ndim - 1) + (rows.shape[1],))
        return torch.where(mask, g, p["fill"].unsqueeze(0)).reshape(m * b, *t.shape[1:])

    def _carry_pre_hook(self, state: dict):
        def hook(mod, args):
            p = state.get("pending")
            if p is None or not args or args[0] is not p["t"]:
                return None
            kind = _per_channel(mod)
            if kind is not None and (kind == "any" or (kind == "channel") == p["conv"]):
                p["fill"] = mod.forward(p["fill"])  # the ablated units' value after ``mod``
                p["carrying"] = mod
                return None
            return (self._expand_pending(state),) + tuple(args[1:])

        return hook

    @staticmethod
    def _carry_hook(state: dict):
        def hook(mod, _inp, out):
            p = state.get("pending")
            if p is not None and p.get("carrying") is mod:
                p["t"], p["carrying"] = out, None
            return None

        return hook

    def _out_hook(self, mod: nn.Module, idx: torch.Tensor, state: dict):
        conv = not isinstance(mod, nn.Linear)

        def hook(_m, _inp, out):
            m, b = state["M"], state["B"]
            if state["mode"] == "carry":
                if "pending" in state:
                    raise RuntimeError("carry: two masked outputs pending at once")
                f = out.shape[1] if conv else out.shape[-1]
                fill = torch.zeros((1,) + tuple(out.shape[1:]), dtype=out.dtype, device=out.device)
                if mod.bias is not None:  # an ablated unit outputs its bias alone
                    shape = (1, f) + (1,) * (out.ndim - 2) if conv else (1,) * (out.ndim - 1) + (f,)
                    fill = fill + mod.bias.view(shape)
                rows = state["keep"][:, idx.to(out.device)]  # [M, F]
                state["pending"] = {"t": out, "rows": rows, "fill": fill, "conv": conv}
                return out
            g = self._grouped(out, state)  # [M|1, B, ...]
            rows = state["keep"][:, idx.to(out.device)]  # [M, F]
            if conv:  # out [N, F, *spatial]
                shape = (m, 1, rows.shape[1]) + (1,) * (out.ndim - 2)
                bias_shape = (1, 1, rows.shape[1]) + (1,) * (out.ndim - 2)
            else:  # out [N, ..., F]
                shape = (m,) + (1,) * (out.ndim - 1) + (rows.shape[1],)
                bias_shape = (1,) * out.ndim + (rows.shape[1],)
            mask = rows.view(shape).to(out.dtype)
            if mod.bias is None:
                res = g * mask
            else:
                # kept rows: the output as is; ablated rows: the bias alone (one fused pass)
                res = torch.addcmul(mod.bias.view(bias_shape) * (1 - mask), g, mask)
            return res.reshape(m * b, *out.shape[1:])

        return hook

    def _in_hook(self, idx: torch.Tensor, state: dict):
        def hook(_m, args):
            x = args[0]
            m, b = state["M"], state["B"]
            g = self._grouped(x, state)
            cols = state["keep"][:, idx.to(x.device)]
            mask = cols.view((m,) + (1,) * (x.ndim - 1) + (cols.shape[1],)).to(x.dtype)
            return ((g * mask).reshape(m * b, *x.shape[1:]),) + tuple(args[1:])

        return hook

    def _activation_logits(self, keep: torch.Tensor, batch: Mapping, mode: str) -> torch.Tensor:
        inputs = model_inputs(batch)
        b = int(batch[LABELS_KEY].shape[0])
        m = int(keep.shape[0])
        dtype = next(self.model.parameters()).dtype
        state = {"M": m, "B": b, "keep": _ext(keep, dtype), "expanded": False, "mode": mode}
        if mode == "upfront":
            inputs = {
                k: (
                    v.repeat(m, *([1] * (v.ndim - 1)))
                    if isinstance(v, torch.Tensor) and v.ndim and v.shape[0] == b
                    else v
                )
                for k, v in inputs.items()
            }
        with self._hooks(state):
            out = forward_logits(self.model, inputs)
        if "pending" in state:
            raise RuntimeError("carry: a masked output was never expanded")
        if out.shape[0] == b and m > 1:
            raise RuntimeError("no masked module was reached in the forward")
        return out.reshape(m, b, out.shape[-1])

    # -- vmap over masked weights ---------------------------------------------------------
    def _vmap_logits(self, keep: torch.Tensor, batch: Mapping) -> torch.Tensor:
        from torch.func import functional_call, vmap

        params = dict(self.model.named_parameters())
        buffers = dict(self.model.named_buffers())
        inputs = model_inputs(batch)
        dtype = next(self.model.parameters()).dtype
        keep_ext = _ext(keep, dtype)

        def one(k):
            masked = {}
            for p, (dim, idx) in self._index.items():
                w = params[p]
                shape = [1] * w.ndim
                shape[dim] = w.shape[dim]
                masked[p] = w * k[idx.to(w.device)].view(shape)
            return forward_logits_functional(
                functional_call, self.model, {**params, **buffers, **masked}, inputs
            )

        return vmap(one)(keep_ext)

    # -- public ---------------------------------------------------------------------------
    @torch.no_grad()
    def logits(self, keep: torch.Tensor, batch: Mapping) -> torch.Tensor:
        """Logits ``[M, B, K]`` of the model under keep-masks ``keep`` bool ``[M, |C|]``."""
        if keep.ndim != 2 or keep.shape[1] != self.units.n_units:
            raise NpeffUserError(
                f"keep masks must be [M, {self.units.n_units}], got {tuple(keep.shape)}"
            )
        if self.method == "vmap":
            return self._vmap_logits(keep, batch)
        if not self._checked:
            self._self_check(keep, batch)
        return self._activation_logits(keep, batch, self._expand)

    def _self_check(self, keep: torch.Tensor, batch: Mapping) -> None:
        """Pick lazy or upfront expansion: lazy must run and agree with the loop reference."""
        self._checked = True
        # two distinct masks at least (the complement of the first), to see the expansion and
        # the ablated units' values even when the first masks keep everything
        probe = torch.cat([keep[: min(2, keep.shape[0])], ~keep[:1]], 0)
        ref = loop_logits(self.model, self.units, probe, batch)
        for mode in ("carry", "lazy", "upfront"):
            try:
                got = self._activation_logits(probe, batch, mode)
            except RuntimeError:
                continue
            if torch.allclose(got, ref, rtol=1e-4, atol=1e-4 * (1 + float(ref.abs().max()))):
                self._expand = mode
                return
        raise RuntimeError(
            "activation masking disagrees with zeroing the weights on this model; use method='vmap'"
        )

    @torch.no_grad()
    def margins(self, keep: torch.Tensor, batches: list[Mapping]) -> torch.Tensor:
        """Margins ``[M, n]`` over all ``batches`` (in order) for masks ``keep`` ``[M, |C|]``."""
        out = []
        for lo in range(0, keep.shape[0], self.masks_per_forward):
            k = keep[lo : lo + self.masks_per_forward]
            row = [margin(self.logits(k, b), b[LABELS_KEY]) for b in batches]
            out.append(torch.cat(row, dim=1))
        return torch.cat(out, dim=0)


# Modules through which a unit keep-mask can be carried: each output channel (conv: dim 1) or
# feature (Linear: last dim) depends only on the same input channel / feature. "any": both.
_ELEMENTWISE = (
    nn.Identity,
    nn.ReLU,
    nn.ReLU6,
    nn.LeakyReLU,
    nn.ELU,
    nn.GELU,
    nn.SiLU,
    nn.Sigmoid,
    nn.Tanh,
    nn.Hardtanh,
    nn.Softplus,
    nn.Mish,
    nn.Hardswish,
)
_POOLS = (
    nn.MaxPool1d,
    nn.MaxPool2d,
    nn.MaxPool3d,
    nn.AvgPool1d,
    nn.AvgPool2d,
    nn.AvgPool3d,
    nn.AdaptiveAvgPool1d,
    nn.AdaptiveAvgPool2d,
    nn.AdaptiveMaxPool1d,
    nn.AdaptiveMaxPool2d,
)


def _per_channel(mod: nn.Module) -> str | None:
    """``"any"``, ``"channel"`` (dim 1 of a conv output only) or None (not per-channel)."""
    if isinstance(mod, _ELEMENTWISE) or (
        isinstance(mod, nn.Dropout | nn.Dropout1d | nn.Dropout2d | nn.Dropout3d)
        and not mod.training
    ):
        return "any"
    if isinstance(mod, _POOLS) and not getattr(mod, "return_indices", False):
        return "channel"
    if (
        isinstance(mod, nn.BatchNorm2d | nn.BatchNorm3d)
        and not mod.training
        and mod.running_mean is not None
    ):
        return "channel"
    return None


def forward_logits_functional(functional_call, model, tensors, inputs) -> torch.Tensor:
    """``forward_logits`` through ``functional_call`` (same output contract)."""
    out = functional_call(model, tensors, args=(), kwargs=dict(inputs))
    out = getattr(out, "logits", out)
    if isinstance(out, tuple | list):
        out = out[0]
    return out


@contextlib.contextmanager
def zeroed(model: nn.Module, unit_map: UnitMap, ablate: Iterable[int]):
    """Zero the weight slices of units ``ablate`` in place; restore them on exit."""
    params = dict(model.named_parameters())
    saved = []
    with torch.no_grad():
        for c in ablate:
            for s in unit_map.slices[int(c)]:
                view = params[s.param].narrow(s.dim, s.start, s.stop - s.start)
                saved.append((view, view.clone()))
                view.zero_()
    try:
        yield model
    finally:
        with torch.no_grad():
            for view, old in reversed(saved):
                view.copy_(old)


@torch.no_grad()
def loop_logits(
    model: nn.Module, unit_map: UnitMap, keep: torch.Tensor, batch: Mapping
) -> torch.Tensor:
    """Reference: logits ``[M, B, K]``, one mask at a time, zeroing weights in place."""
    out = []
    for k in keep:
        with zeroed(model, unit_map, torch.nonzero(~k.bool()).flatten().tolist()):
            out.append(forward_logits(model, batch))
    return torch.stack(out)


@torch.no_grad()
def loop_margins(
    model: nn.Module, unit_map: UnitMap, keep: torch.Tensor, loader: Iterable
) -> torch.Tensor:
    """Reference: margins ``[M, n]``, one mask at a time over the whole loader."""
    model.eval()
    rows = []
    for k in keep:
        with zeroed(model, unit_map, torch.nonzero(~k.bool()).flatten().tolist()):
            rows.append(
                torch.cat([margin(forward_logits(model, b), b[LABELS_KEY]) for b in loader])
            )
    return torch.stack(rows)
