"""Reuse the unperturbed prefix of a network across perturbed forwards.

When the perturbed parameters all lie in a suffix of the network (MiniLM with only its top layer
selected), every module that finishes before the first perturbed module starts computes the same
thing for every perturbation. :func:`plan_prefix` finds those modules on a probe batch (forward
hooks record the execution order); their outputs are captured once per example, and later
forwards replace them by stubs returning the stored outputs, so only the suffix runs.

Two entry points, one mechanism:

- :func:`prefix_for_batch` (model, batch, perturbed names) → :class:`BatchPrefix`, whose
  ``run(overrides)`` gives the logits with some parameters replaced (COAR's masked forwards);
- :class:`PrefixCache` over an :class:`ExampleCache`: ``logits(indices)`` for any subset of the
  examples, used by the perturbation evaluator.

Only outputs that the suffix reads are stored (a probe replaces each frozen output by NaN and
checks the logits); the others return an alias of a stored output of the same structure. A plan
is used only if its replay reproduces the full forward's logits on the probe batch.
"""

from __future__ import annotations

import contextlib
import warnings
from collections.abc import Iterable, Iterator
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn
from torch.utils._pytree import tree_flatten, tree_unflatten

from npeff.errors import NpeffUserError
from npeff.perturb.examples import ExampleCache, ForwardFn, default_forward_logits, to_device

REPLAY_RTOL = 1e-5


@dataclass
class PrefixPlan:
    """frozen: names of the maximal modules that run before any perturbed one, in order.
    stored: the subset whose outputs the suffix reads; alias: frozen name → stored name."""

    frozen: list[str]
    stored: list[str]
    alias: dict[str, str]


def _batch_size(batch: dict) -> int:
    return int(len(batch["labels"])) if "labels" in batch else len(next(iter(batch.values())))


def _forward_hooked(model: nn.Module, batch: dict, forward: ForwardFn, handles: list):
    """The logits of one no-grad forward; the hook ``handles`` are removed afterwards."""
    try:
        with torch.no_grad():
            return forward(model, batch)
    finally:
        for h in handles:
            h.remove()


def _record_order(model: nn.Module, batch: dict, forward: ForwardFn):
    """Event indices (start, end) and call counts of every module on one forward."""
    events: dict[str, list[int]] = {}
    counter = [0]
    handles = []
    for name, mod in model.named_modules():

        def pre(m, args, _n=name):
            events.setdefault(_n, [])
            events[_n].append(counter[0])
            counter[0] += 1

        def post(m, args, out, _n=name):
            events[_n].append(counter[0])
            counter[0] += 1

        handles.append(mod.register_forward_pre_hook(pre))
        handles.append(mod.register_forward_hook(post))
    return events, _forward_hooked(model, batch, forward, handles)


def _frozen_modules(model: nn.Module, perturbed: set[str], events) -> list[str]:
    owners = set()
    for mname, mod in model.named_modules():
        for pname in mod._parameters:
            if (f"{mname}.{pname}" if mname else pname) in perturbed:
                owners.add(mname)
    starts = [events[o][0] for o in owners if o in events]
    if not starts:
        return []
    first = min(starts)
    frozen: list[str] = []

    def visit(name: str, mod: nn.Module) -> None:
        prefix = f"{name}." if name else ""
        has = any(f"{prefix}{p}" in perturbed for p, _ in mod.named_parameters())
        if has:
            for child_name, child in mod.named_children():
                visit(prefix + child_name, child)
        elif name in events and len(events[name]) == 2 and events[name][1] < first:
            frozen.append(name)

    visit("", model)
    return sorted(frozen, key=lambda n: events[n][0])


@contextlib.contextmanager
def _stubs(model: nn.Module, outputs: dict[str, object]) -> Iterator[None]:
    """Frozen modules return ``outputs[name]`` instead of computing."""
    mods = dict(model.named_modules())
    try:
        for name, out in outputs.items():
            mods[name].forward = lambda *a, _o=out, **k: _o
        yield
    finally:
        for name in outputs:
            mods[name].__dict__.pop("forward", None)


def _capture(model: nn.Module, batch: dict, names: list[str], forward: ForwardFn):
    """One full forward → (logits, {name: output}) for the modules ``names``."""
    mods = dict(model.named_modules())
    got: dict[str, object] = {}
    handles = [
        mods[n].register_forward_hook(lambda m, a, out, _n=n: got.__setitem__(_n, out))
        for n in names
    ]
    return _forward_hooked(model, batch, forward, handles), got


def _nan_like(out):
    leaves, spec = tree_flatten(out)
    return tree_unflatten(
        [
            torch.full_like(x, float("nan")) if torch.is_tensor(x) and x.is_floating_point() else x
            for x in leaves
        ],
        spec,
    )


def _structure(out):
    leaves, spec = tree_flatten(out)
    return (str(spec), tuple(tuple(x.shape) if torch.is_tensor(x) else repr(x) for x in leaves))


def _close(a: torch.Tensor, b: torch.Tensor) -> bool:
    a, b = a.double(), b.double()
    return bool(torch.isfinite(a).all()) and float((a - b).abs().max()) <= REPLAY_RTOL * max(
        float(b.abs().max()), 1e-30
    )


def plan_prefix(
    model: nn.Module, batch: dict, perturbed: Iterable[str], forward: ForwardFn | None = None
) -> PrefixPlan | None:
    """The reusable prefix of ``model`` when ``perturbed`` (parameter names) change, found on
    ``batch``; None when there is none or its replay does not reproduce the logits."""
    forward = forward or default_forward_logits
    perturbed = set(perturbed)
    if model.training:  # dropout would make the stored prefix one random draw: do not cache
        return None
    events, logits = _record_order(model, batch, forward)
    frozen = _frozen_modules(model, perturbed, events)
    if not frozen:
        return None
    _, outs = _capture(model, batch, frozen, forward)
    stored, alias = [], {}
    for name in frozen:
        trial = dict(outs)
        trial[name] = _nan_like(outs[name])
        with _stubs(model, trial), torch.no_grad():
            if _close(forward(model, batch), logits):
                alias[name] = ""  # unread: resolved below
                continue
        stored.append(name)
    if not stored:
        return None
    for name in list(alias):
        same = [s for s in stored if _structure(outs[s]) == _structure(outs[name])]
        if same:
            alias[name] = same[-1]
        else:
            stored.append(name)
            del alias[name]
    plan = PrefixPlan(frozen, sorted(stored, key=frozen.index), alias)
    with _stubs(model, plan_outputs(plan, outs)), torch.no_grad():
        if not _close(forward(model, batch), logits):
            warnings.warn(
                "the cached prefix does not reproduce the logits; not caching", stacklevel=2
            )
            return None
    return plan


def plan_outputs(plan: PrefixPlan, stored: dict[str, object]) -> dict[str, object]:
    """Outputs of every frozen module from those of the stored ones."""
    out = {n: stored[n] for n in plan.stored}
    out.update({n: stored[a] for n, a in plan.alias.items()})
    return out


@contextlib.contextmanager
def overridden(model: nn.Module, overrides: dict[str, torch.Tensor] | None) -> Iterator[None]:
    """Parameters ``overrides`` {name: tensor} in place inside, the originals (bitwise) after."""
    if not overrides:
        yield
        return
    params = dict(model.named_parameters())
    saved = {n: params[n].detach().clone() for n in overrides}
    try:
        with torch.no_grad():
            for n, v in overrides.items():
                params[n].copy_(v)
        yield
    finally:
        with torch.no_grad():
            for n, v in saved.items():
                params[n].copy_(v)


class BatchPrefix:
    """The prefix outputs of one batch; ``run(overrides)`` → logits of the suffix with some
    parameters replaced (they must be among the ``perturbed`` names the plan was made for)."""

    def __init__(self, model, batch, plan: PrefixPlan | None, perturbed, forward):
        self.model, self.batch, self.plan, self.forward = model, batch, plan, forward
        self.perturbed = set(perturbed)
        self.outputs = None
        if plan is not None:
            _, got = _capture(model, batch, plan.stored, forward)
            self.outputs = plan_outputs(plan, got)

    def run(self, overrides: dict[str, torch.Tensor] | None = None) -> torch.Tensor:
        extra = set(overrides or {}) - self.perturbed
        if extra:
            raise NpeffUserError(
                f"parameters {sorted(extra)[:3]} are outside the perturbed set the prefix was "
                "cached for; cache it with them included"
            )
        with overridden(self.model, overrides), torch.no_grad():
            if self.outputs is None:
                return self.forward(self.model, self.batch)
            with _stubs(self.model, self.outputs):
                return self.forward(self.model, self.batch)


def prefix_for_batch(
    model: nn.Module, batch: dict, perturbed: Iterable[str], forward: ForwardFn | None = None
) -> BatchPrefix:
    """Cache the unperturbed prefix of ``model`` on ``batch`` (no caching when there is none)."""
    forward = forward or default_forward_logits
    perturbed = list(perturbed)
    return BatchPrefix(
        model, batch, plan_prefix(model, batch, perturbed, forward), perturbed, forward
    )


class PrefixCache:
    """Stored prefix outputs of every example of an :class:`ExampleCache` (CPU tensors).

    ``logits(indices)`` runs only the suffix, with whatever parameter values the model holds
    (e.g. inside ``ModelPerturber.perturbed``). Memory: the stored outputs of n examples.
    """

    def __init__(self, model, cache: ExampleCache, plan: PrefixPlan, batch_size, forward, progress):
        self.model, self.cache, self.plan, self.forward = model, cache, plan, forward
        self.device = next(model.parameters()).device
        self._leaves: dict[str, list[list]] = {n: [] for n in plan.stored}
        self._specs: dict[str, object] = {}
        self._starts = []
        pos = 0
        it = cache.batches(None, batch_size)
        if progress:
            from tqdm.auto import tqdm

            it = tqdm(it, desc="prefix", leave=False)
        for batch in it:
            b = _batch_size(batch)
            _, got = _capture(model, to_device(batch, self.device), plan.stored, forward)
            for n, out in got.items():
                leaves, spec = tree_flatten(out)
                self._specs[n] = spec
                self._leaves[n].append(
                    [x.detach().cpu() if torch.is_tensor(x) else x for x in leaves]
                )
            self._starts.append(pos)
            pos += b
        self._ends = np.asarray(self._starts[1:] + [pos], dtype=np.int64)

    @classmethod
    def build(
        cls,
        model: nn.Module,
        cache: ExampleCache,
        perturbed: Iterable[str],
        batch_size: int = 64,
        forward: ForwardFn | None = None,
        progress: bool = False,
    ) -> PrefixCache | None:
        """None when no prefix can be reused (e.g. the embeddings are perturbed)."""
        forward = forward or default_forward_logits
        if cache.n == 0:
            return None
        device = next(model.parameters()).device
        probe = to_device(next(cache.batches(np.arange(min(cache.n, 4)), 4)), device)
        plan = plan_prefix(model, probe, perturbed, forward)
        if plan is None:
            return None
        return cls(model, cache, plan, batch_size, forward, progress)

    def _outputs_for(self, indices: np.ndarray) -> dict[str, object]:
        """The stored outputs of the examples ``indices`` (ascending), as one batch."""
        which = np.searchsorted(self._ends, indices, side="right")
        out = {}
        for n in self.plan.stored:
            parts, batched = [], None
            for bi in np.unique(which):
                size = int(self._ends[bi] - self._starts[bi])
                rows = torch.as_tensor(indices[which == bi] - self._starts[bi], dtype=torch.long)
                leaves = self._leaves[n][bi]
                if batched is None:
                    batched = [
                        torch.is_tensor(x) and x.ndim > 0 and x.shape[0] == size for x in leaves
                    ]
                parts.append(
                    [x.index_select(0, rows) if bt else x for x, bt in zip(leaves, batched)]
                )
            leaves = [
                (torch.cat([p[i] for p in parts]) if bt else parts[0][i])
                for i, bt in enumerate(batched)
            ]
            leaves = [x.to(self.device) if torch.is_tensor(x) else x for x in leaves]
            out[n] = tree_unflatten(leaves, self._specs[n])
        return plan_outputs(self.plan, out)

    @torch.no_grad()
    def logits(
        self,
        indices: np.ndarray | None = None,
        batch_size: int = 64,
        forward: ForwardFn | None = None,
    ) -> torch.Tensor:
        """Logits [len(indices) or n, C] (float32, CPU), like ``ExampleCache.logits``;
        ``forward`` (default: the cache's) runs the suffix (e.g. stacked perturbed sets)."""
        forward = forward or self.forward
        idx_all = np.arange(self.cache.n) if indices is None else np.asarray(indices, np.int64)
        out, pos = [], 0
        for batch in self.cache.batches(idx_all, batch_size):
            b = _batch_size(batch)
            outputs = self._outputs_for(idx_all[pos : pos + b])
            pos += b
            with _stubs(self.model, outputs):
                out.append(forward(self.model, to_device(batch, self.device)).float().cpu())
        if not out:
            return torch.zeros(0, 0)
        return torch.cat(out)
