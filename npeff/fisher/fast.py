"""Per-example class gradients by one forward and one batched backward (the per-layer fast path).

``FisherEngine`` has the interface of :class:`PerExampleGrads` (``logits``, ``class_grads``) plus
``diag_fisher``. Parameters owned only by layers that :mod:`npeff.fisher.layers` covers are done
the fast way: forward hooks capture each call's input and output, the k objectives
Σ_b w_bj log p_{c_bj}(x_b) (j < k) are backpropagated to those outputs in one batched backward
(``vmap`` over torch.func's ``vjp``, ``is_grads_batched`` as the fallback; one backward per
objective for conv/pool models on CPU; gradients seeded at the logits as w_bj (e_c − p_b)), and
the layer rules turn
(input, output gradient) into per-example weight gradients. Every other parameter goes through
torch.func (:class:`PerExampleGrads`). The choice is automatic per parameter — structural (owner
layers covered, all their calls seen with the batch first) and then checked once against the
torch.func path on the first examples — or forced with ``mode="fast"`` / ``mode="func"``.
"""

from __future__ import annotations

import contextlib
import weakref
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import torch
from torch import nn
from torch.func import vjp, vmap

from npeff.artifacts.layout import ParameterLayout
from npeff.errors import NpeffUserError
from npeff.fisher.grads import PerExampleGrads, model_inputs, output_logits
from npeff.fisher.layers import DIAG_RULES, FRESH, RULES, diag_rule_applies, rule_name

ENGINES = ("auto", "fast", "func")
# model → {(fast candidates, mode): parameters that passed prepare()'s check}
_CHECKED: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()
# model → {(fast parameters, input shapes): output shapes of the hooked calls}
_SHAPES: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


@dataclass
class _Owner:
    module: nn.Module
    rule: str
    attr: str  # "weight" | "bias"


class FisherEngine:
    """Per-example, per-class gradients of the selected parameters, fast path where it applies.

    ``mode``: "auto" (fast where covered and verified, torch.func elsewhere), "fast" (error if a
    parameter is not covered) or "func" (torch.func for all, the previous behaviour).
    """

    def __init__(
        self,
        model: nn.Module,
        named_params: Sequence[tuple[str, nn.Parameter]],
        mode: str = "auto",
    ):
        if mode not in ENGINES:
            raise NpeffUserError(f"fisher engine must be one of {ENGINES}, got {mode!r}")
        if model.training:
            raise NpeffUserError(
                "the model is in training mode; call model.eval() first (dropout and BatchNorm "
                "batch statistics make per-example Fishers ill-defined and break vmap)"
            )
        self.model = model
        self.mode = mode
        self.stream_objectives = _has_pooling_or_conv(model)
        self.named = list(named_params)
        self.layout = ParameterLayout.from_named_tensors(self.named)
        self._owners = _owners(model, self.named) if mode != "func" else {}
        self.fast_names: list[str] = [n for n, _ in self.named if self._owners.get(n)]
        if mode == "fast":
            missing = [n for n, _ in self.named if not self._owners.get(n)]
            if missing:
                raise NpeffUserError(
                    f"fisher.engine=fast, but {len(missing)} selected parameters belong to layers "
                    f"the fast path does not cover (e.g. {missing[:3]}); use fisher.engine=auto"
                )
        self._prepared = mode == "func" or not self.fast_names
        self._kept = None
        self._func: PerExampleGrads | None = None
        self._rebuild_func()

    # ------------------------------------------------------------------ bookkeeping
    @property
    def n_parameters(self) -> int:
        return self.layout.n_parameters

    @property
    def device(self) -> torch.device:
        return self.named[0][1].device

    @property
    def dtype(self) -> torch.dtype:
        return self.named[0][1].dtype

    @property
    def func_names(self) -> list[str]:
        fast = set(self.fast_names)
        return [n for n, _ in self.named if n not in fast]

    def assignment(self) -> dict:
        """Which path each parameter takes (stored in the PEF file's metadata)."""
        return {"requested": self.mode, "fast": list(self.fast_names), "func": self.func_names}

    def _rebuild_func(self) -> None:
        func = set(self.func_names)
        named = [(n, p) for n, p in self.named if n in func]
        self._func = PerExampleGrads(self.model, named) if named else None
        idx = {n: i for i, n in enumerate(self.layout.names)}
        self._slots = {
            n: (self.layout.offsets[idx[n]], self.layout.numel(idx[n]), self.layout.shapes[idx[n]])
            for n in self.layout.names
        }

    def logits(self, batch: Mapping[str, torch.Tensor], keep: bool = False) -> torch.Tensor:
        """Batched forward → logits [B, C_model] (no graph).

        ``keep``: the next ``class_grads``/``diag_fisher`` call is on this very batch, so the fast
        path runs its hooked forward now and reuses it there (one forward instead of two).
        """
        self._kept = None
        if keep and self._prepared and self.fast_names:
            fwd = self._forward_vjp(batch)
            self._kept = (_batch_key(batch), fwd)
            return fwd[1].detach()
        with torch.no_grad():
            return output_logits(self.model(**model_inputs(batch)))

    def _forward_once(self, batch):
        """The hooked forward of ``batch``: the one kept by ``logits(keep=True)`` or a new one."""
        kept, self._kept = self._kept, None
        if kept is not None and kept[0] == _batch_key(batch):
            return kept[1]
        return self._forward_vjp(batch)

    def _forward_vjp(self, batch):
        """The hooked forward under ``torch.func.vjp`` → (calls [(module, input, None)], logits,
        vjp_fn of the logits w.r.t. the outputs of the calls).

        ``vmap(vjp_fn)`` backpropagates the k seeds with torch.func's batching rules, which fold
        them into the batch (2-3x faster on a CNN than ``is_grads_batched``, the fallback with
        ``vjp_fn`` None); on CPU, models with convolution or pooling layers call ``vjp_fn`` once
        per seed instead (see ``_has_pooling_or_conv``). The zero offsets added to
        the outputs (the primals) need the outputs' shapes: taken once per model, parameters
        and input shapes (a hooked forward), and checked at every call.
        """
        key = tuple((k, tuple(v.shape)) for k, v in batch.items() if torch.is_tensor(v))
        try:
            # per model, shared by its engines (each compute_pefs call makes a new one)
            known = _SHAPES.setdefault(self.model, {})
            fast = set(self.fast_names)
            params = tuple((n, p.data_ptr(), tuple(p.shape)) for n, p in self.named if n in fast)
            key = (params, key)
            shapes = known.get(key)
            if shapes is None:
                calls, _ = self._forward(batch)
                shapes = known[key] = [tuple(out.shape) for _, _, out in calls]
                del calls
            return self._functional_forward(batch, shapes)
        except Exception:  # noqa: BLE001 — any transform failure: the autograd path
            calls, lg = self._forward(batch)
            return calls, lg, None

    def _functional_forward(self, batch, shapes):
        modules = {id(o.module): o.module for n in self.fast_names for o in self._owners[n]}
        b = len(next(iter(batch.values())))
        order: list = []
        zeros = [torch.zeros(sh, dtype=self.dtype, device=self.device) for sh in shapes]

        def f(*eps):
            it = iter(eps)
            inputs: list = []

            def hook(module, args, out):
                a = args[0]
                if (
                    b > 1
                    and a.shape[0] == 1
                    and out.shape[0] == 1
                    and isinstance(module, nn.Embedding)
                ):
                    a = a.expand(b, *a.shape[1:])
                    out = out.expand(b, *out.shape[1:])
                order.append(module)
                inputs.append(a)
                eps = next(it)
                if eps.shape != out.shape:  # not the shapes recorded: the autograd path
                    raise RuntimeError("the layers' output shapes changed")
                return out + eps

            handles = [m.register_forward_hook(hook) for m in modules.values()]
            try:
                lg = output_logits(self.model(**model_inputs(batch)))
            finally:
                for h in handles:
                    h.remove()
            if len(inputs) != len(eps):
                raise RuntimeError("the layers were called a different number of times")
            return lg, inputs

        with torch.no_grad():
            lg, fn, inputs = vjp(f, *zeros, has_aux=True)
        return [(m, a, None) for m, a in zip(order, inputs)], lg, fn

    # ------------------------------------------------------------------ the automatic choice
    def prepare(self, batch: Mapping[str, torch.Tensor]) -> None:
        """Settle the per-parameter choice on a first batch (a no-op after the first call).

        Structural: a parameter stays on the fast path only if each of its owner layers was
        called with the batch as the first dim. Numerical: per-example gradients of 2 examples
        (up to 4 classes) must match a plain autograd loop over single examples (relative error
        ≤ 1e-4 float32, 1e-8 float64); a mismatch moves the parameter to torch.func (mode
        "auto") or raises (mode "fast").
        """
        if self._prepared:
            return
        self._prepared = True
        key = (tuple(self.fast_names), self.mode)
        checked = _CHECKED.get(self.model, {})
        if key in checked:  # this model and parameter set were checked in this process
            self._demote([n for n in self.fast_names if n not in checked[key]], "see above")
            return
        sub = {k: v[: min(2, len(v))] for k, v in batch.items()}
        b = len(next(iter(sub.values())))
        calls, logits = self._forward(sub)
        seen = {id(m) for m, _, _ in calls}
        bad_modules = {
            id(m) for m, a, out in calls if a is None or a.shape[0] != b or out.shape[0] != b
        }
        bad = [
            n
            for n in self.fast_names
            if any(id(o.module) not in seen or id(o.module) in bad_modules for o in self._owners[n])
        ]
        del calls
        self._demote(bad, "its layer is not called with the batch as the first dim")
        if not self.fast_names:
            return
        c = min(int(logits.shape[-1]), 4)
        classes = torch.arange(c, device=logits.device).expand(b, c)
        fast = self._fast_rows(sub, logits.detach(), classes, None)
        ref_named = [(n, p) for n, p in self.named if n in set(self.fast_names)]
        ref = _autograd_rows(self.model, sub, [p for _, p in ref_named], c)
        tol = 1e-8 if ref.dtype == torch.float64 else 1e-4
        off = 0
        wrong = []
        for n, _ in ref_named:
            o, size, _ = self._slots[n]
            r = ref[..., off : off + size]
            f = fast[n]
            off += size
            scale = float(r.norm()) + 1e-30
            if float((f.reshape(r.shape) - r).norm()) > tol * max(scale, float(ref.norm()) * 1e-3):
                wrong.append(n)
        self._demote(wrong, "its fast-path gradients differ from an autograd loop's")
        _CHECKED.setdefault(self.model, {})[key] = set(self.fast_names)

    def _demote(self, names: list[str], why: str) -> None:
        if not names:
            return
        if self.mode == "fast":
            raise NpeffUserError(
                f"fisher.engine=fast, but {len(names)} parameters cannot use it ({why}), e.g. "
                f"{names[:3]}; use fisher.engine=auto"
            )
        drop = set(names)
        self.fast_names = [n for n in self.fast_names if n not in drop]
        self._rebuild_func()

    # ------------------------------------------------------------------ the fast path
    @contextlib.contextmanager
    def _grad_on_fast(self):
        """Only the fast-path parameters require grad while the hooked forward runs."""
        fast = {id(p) for n, p in self.named if n in set(self.fast_names)}
        saved = [(p, p.requires_grad) for p in self.model.parameters()]
        try:
            for p, _ in saved:
                p.requires_grad_(id(p) in fast)
            yield
        finally:
            for p, rg in saved:
                p.requires_grad_(rg)

    def _forward(self, batch):
        """Forward with hooks on the owner layers → (calls [(module, input, output)], logits)."""
        modules = {id(o.module): o.module for n in self.fast_names for o in self._owners[n]}
        calls: list = []
        b = len(next(iter(batch.values())))

        def hook(module, args, out):
            if not args or not torch.is_tensor(args[0]) or not torch.is_tensor(out):
                calls.append((module, None, out))  # called with keywords: not covered
                return out
            a = args[0].detach()
            if b > 1 and a.shape[0] == 1 and out.shape[0] == 1 and isinstance(module, nn.Embedding):
                # an input shared by the batch (BERT's position ids [1, L]): give each example
                # its own copy of the output so that its gradient is per example
                a = a.expand(b, *a.shape[1:])
                out = out.expand(b, *out.shape[1:])
            calls.append((module, a, out))
            return out

        handles = [m.register_forward_hook(hook) for m in modules.values()]
        try:
            with self._grad_on_fast(), torch.enable_grad():
                logits = output_logits(self.model(**model_inputs(batch)))
        finally:
            for h in handles:
                h.remove()
        return calls, logits

    @staticmethod
    def _seeds(logits, classes, weights) -> torch.Tensor:
        """The k objectives' gradients at the logits, w_bj (e_c − p_b) → [k, B, C]."""
        c = logits.shape[-1]
        probs = torch.softmax(logits.detach(), dim=-1)
        onehot = nn.functional.one_hot(classes, c).to(probs.dtype)  # [B, k, C]
        seed = onehot - probs[:, None, :]
        if weights is not None:
            seed = seed * weights[..., None].to(seed.dtype)
        return seed.transpose(0, 1).contiguous()

    def _output_grads(self, calls, logits, classes, weights, fn=None):
        """Gradients of the k objectives w.r.t. each call's output → list of [k, B, *out]."""
        seed = self._seeds(logits, classes, weights)
        k = seed.shape[0]
        if fn is not None and self.stream_objectives and k > 1 and seed.device.type == "cpu":
            # stored batch-first [B, k, *out] (returned as [k, B, *out] views): a convolution's
            # rule then multiplies all k objectives of an example in one matrix product
            with torch.no_grad():
                first = fn(seed[0])
                grads = [
                    torch.empty((g.shape[0], k, *g.shape[1:]), dtype=g.dtype, device=g.device)
                    for g in first
                ]
                for j in range(k):
                    for dest, g in zip(grads, first if j == 0 else fn(seed[j])):
                        dest[:, j].copy_(g)
            return [g.transpose(0, 1) for g in grads]
        if fn is not None:
            with torch.no_grad():
                return list(vmap(fn)(seed))
        outs = [out for _, _, out in calls]
        if k == 1:
            grads = torch.autograd.grad(logits, outs, seed[0], allow_unused=True)
            grads = [None if g is None else g[None] for g in grads]
        else:
            try:
                grads = torch.autograd.grad(
                    logits, outs, seed, is_grads_batched=True, allow_unused=True, retain_graph=True
                )
            except RuntimeError:  # an op without a batching rule: one backward per objective
                per = [
                    torch.autograd.grad(logits, outs, seed[j], allow_unused=True, retain_graph=True)
                    for j in range(k)
                ]
                grads = [
                    None if per[0][i] is None else torch.stack([p[i] for p in per])
                    for i in range(len(outs))
                ]
        return [
            torch.zeros((k, *out.shape), dtype=out.dtype, device=out.device) if g is None else g
            for g, out in zip(grads, outs)
        ]

    def _fast_rows(self, batch, logits, classes, weights) -> dict[str, torch.Tensor]:
        """Per-example class gradients of the fast parameters → {name: [B, k, *shape]}."""
        calls, lg, fn = self._forward_once(batch)
        grads = self._output_grads(calls, lg, classes, weights, fn)
        b, k = classes.shape
        out = {}
        for n in self.fast_names:
            shape = self._slots[n][2]
            out[n] = torch.empty((b, k, *shape), dtype=lg.dtype, device=lg.device)
        self._accumulate(calls, grads, out, diag=False)
        return out

    def _accumulate(self, calls, grads, dests, diag: bool) -> None:
        """Add every call's contribution to ``dests`` {name: tensor}, whose contents are garbage
        on entry: the first write to each overwrites it, a parameter never reached is zeroed."""
        by_module: dict[int, list[tuple[str, str]]] = {}
        for n in dests:
            for o in self._owners[n]:
                by_module.setdefault(id(o.module), []).append((o.attr, n))
        fresh = set(dests)
        for (module, a, _), g in zip(calls, grads):
            targets = by_module.get(id(module), [])
            if not targets:
                continue
            rule = rule_name(module)
            sub = {attr: dests[n] for attr, n in targets}
            sub[FRESH] = {attr for attr, n in targets if n in fresh}
            (DIAG_RULES if diag else RULES)[rule](module, a, g, sub)
            fresh -= {n for _, n in targets}
        for n in fresh:
            dests[n].zero_()

    # ------------------------------------------------------------------ public API
    def class_grads(
        self,
        batch: Mapping[str, torch.Tensor],
        classes: torch.Tensor,
        n_logits: int,
        weights: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """w_bc·∇_θ log p_c(x_b) for classes int [B, k] (of ``n_logits``) → [B, k, m]."""
        self.prepare(batch)
        b, k = classes.shape
        if not self.fast_names:
            return self._func.class_grads(batch, classes, n_logits, weights)
        rows = torch.empty((b, k, self.n_parameters), dtype=self.dtype, device=self.device)
        calls, lg, fn = self._forward_once(batch)
        grads = self._output_grads(calls, lg, classes, weights, fn)
        dests = {}
        for n in self.fast_names:
            off, size, shape = self._slots[n]
            dests[n] = rows[:, :, off : off + size].view(b, k, *shape)
        self._accumulate(calls, grads, dests, diag=False)
        del calls, grads
        if self._func is not None:
            self._fill_func(rows, self._func.class_grads(batch, classes, n_logits, weights))
        return rows

    def diag_fisher(
        self,
        batch: Mapping[str, torch.Tensor],
        classes: torch.Tensor,
        n_logits: int,
        weights: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Σ_j (w_bj ∇_θ log p_{c_bj}(x_b))² → [B, m] (the D-PEF when w = sqrt(p)).

        Layers applied once per example use Σ_j (g_j∘g_j) ⊗ (a∘a) directly; the others (and
        shared weights) form their per-class gradients and square them.
        """
        self.prepare(batch)
        b, k = classes.shape
        if not self.fast_names:
            return self._func.class_grads(batch, classes, n_logits, weights).square().sum(1)
        dtype, device = self.dtype, self.device
        diag = torch.empty((b, self.n_parameters), dtype=dtype, device=device)
        calls, lg, fn = self._forward_once(batch)
        n_calls: dict[int, int] = {}
        for m, _, _ in calls:
            n_calls[id(m)] = n_calls.get(id(m), 0) + 1
        direct, dense = {}, {}
        for n in self.fast_names:
            off, size, shape = self._slots[n]
            owners = self._owners[n]
            o = owners[0]
            call = next((c for c in calls if c[0] is o.module), None)
            if (
                len(owners) == 1
                and n_calls.get(id(o.module), 0) == 1
                and call is not None
                and diag_rule_applies(o.rule, o.module, call[1])
            ):
                direct[n] = diag[:, off : off + size].view(b, *shape)
            else:
                dense[n] = torch.empty((b, k, *shape), dtype=dtype, device=device)
        grads = self._output_grads(calls, lg, classes, weights, fn)
        self._accumulate(calls, grads, direct, diag=True)
        self._accumulate(calls, grads, dense, diag=False)
        del calls, grads
        for n, t in dense.items():
            off, size, _ = self._slots[n]
            diag[:, off : off + size] = t.reshape(b, k, size).square().sum(1)
        if self._func is not None:
            self._fill_func(
                diag, self._func.class_grads(batch, classes, n_logits, weights).square().sum(1)
            )
        return diag

    def _fill_func(self, out: torch.Tensor, func: torch.Tensor) -> None:
        """Copy the torch.func parameters' columns (in layout order) into ``out`` [..., m]."""
        pos = 0
        for n in self.func_names:
            off, size, _ = self._slots[n]
            out[..., off : off + size] = func[..., pos : pos + size]
            pos += size


def _autograd_rows(model, batch, params, c) -> torch.Tensor:
    """Reference ∇ log p_j (j < c) of each example run alone → [B, c, Σ numel] (autograd loop)."""
    b = len(next(iter(batch.values())))
    saved = [(p, p.requires_grad) for p in params]
    try:
        for p in params:
            p.requires_grad_(True)
        out = []
        for i in range(b):
            one = {k: v[i : i + 1] for k, v in batch.items()}
            with torch.enable_grad():
                logp = torch.log_softmax(output_logits(model(**model_inputs(one)))[0], -1)
                rows = []
                for j in range(c):
                    gs = torch.autograd.grad(logp[j], params, retain_graph=True, allow_unused=True)
                    rows.append(
                        torch.cat(
                            [
                                (torch.zeros_like(p) if g is None else g).reshape(-1)
                                for g, p in zip(gs, params)
                            ]
                        )
                    )
            out.append(torch.stack(rows))
        return torch.stack(out)
    finally:
        for p, rg in saved:
            p.requires_grad_(rg)


def _has_pooling_or_conv(model: nn.Module) -> bool:
    """The model has a convolution or pooling layer. The batching rules of their backward (and
    of a ReLU before a pool) expand the saved inputs to all k objectives, so the k objectives
    are backpropagated one at a time instead of under ``vmap`` on CPU (measured faster there;
    for matmul-only models, and on GPUs, where launches cost more, the batched backward)."""
    kinds = (nn.modules.conv._ConvNd, nn.modules.pooling._MaxPoolNd, nn.modules.pooling._AvgPoolNd)
    return any(isinstance(m, kinds) for m in model.modules())


def _batch_key(batch) -> tuple:
    return tuple((k, v.data_ptr(), tuple(v.shape)) for k, v in batch.items() if torch.is_tensor(v))


def _owners(model: nn.Module, named) -> dict[str, list[_Owner]]:
    """For each selected parameter, its owner layers if every one is covered, else []."""
    by_id: dict[int, list[_Owner | None]] = {}
    for module in model.modules():
        rule = rule_name(module)
        for attr, p in module._parameters.items():
            if p is None:
                continue
            ok = rule is not None and attr in ("weight", "bias")
            by_id.setdefault(id(p), []).append(_Owner(module, rule, attr) if ok else None)
    out = {}
    for n, p in named:
        owners = by_id.get(id(p), [])
        out[n] = owners if owners and all(o is not None for o in owners) else []
    return out


def build_engine(model: nn.Module, named_params, mode: str = "auto"):
    """The gradient engine for ``compute_pefs``: :class:`FisherEngine` (any mode)."""
    return FisherEngine(model, named_params, mode)
