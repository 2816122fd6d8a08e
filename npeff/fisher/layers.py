"""Per-example weight gradients of single layers from captured inputs and output gradients.

Each rule turns one call of a layer — its input ``a`` (batch first, B examples) and the gradients
``g`` [k, B, *out] of k objectives with respect to its output — into per-example, per-objective
gradients of the layer's ``weight`` and ``bias``, accumulated into ``dest`` [B, k, *param shape].
Positions that share a weight (sequence tokens, image locations) are summed over. Where a layer is
applied once per example (no positions) a rule can also give the D-PEF contribution
Σ_k (g_k∘g_k) ⊗ (a∘a) [B, *param shape] without materialising the k gradients (a convolution's
D-PEF rule forms its per-objective gradients, one product per example, and squares them).

Covered: ``nn.Linear``, HF ``Conv1D``, ``nn.Conv1d``/``nn.Conv2d`` (groups 1, zero padding given as
numbers), ``nn.Embedding`` (no max_norm, no scale_grad_by_freq), ``nn.LayerNorm`` (affine).
Anything else (or a subclass that overrides ``forward``) is left to the torch.func path.
"""

from __future__ import annotations

import sys
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn


def _hf_conv1d_type():
    if "transformers" not in sys.modules:
        return None
    try:
        from transformers.pytorch_utils import Conv1D
    except ImportError:  # pragma: no cover
        return None
    return Conv1D


def _plain(module: nn.Module, base: type) -> bool:
    """``module`` is a ``base`` whose ``forward`` is ``base.forward`` (not overridden)."""
    return isinstance(module, base) and type(module).forward is base.forward


def rule_name(module: nn.Module) -> str | None:
    """The name of the rule covering ``module``, or None when the fast path does not cover it."""
    if _plain(module, nn.Linear):
        return "linear"
    conv1d = _hf_conv1d_type()
    if conv1d is not None and _plain(module, conv1d):
        return "hf_conv1d"
    if (_plain(module, nn.Conv2d) or _plain(module, nn.Conv1d)) and (
        module.groups == 1
        and module.padding_mode == "zeros"
        and not isinstance(module.padding, str)
    ):
        return "conv"
    if _plain(module, nn.Embedding) and module.max_norm is None and not module.scale_grad_by_freq:
        return "embedding"
    if _plain(module, nn.LayerNorm) and module.elementwise_affine:
        return "layernorm"
    return None


def _positions(a: torch.Tensor, features: int) -> torch.Tensor:
    """[B, ..., features] → [B, S, features] (S = product of the middle dims, 1 if none)."""
    return a.reshape(a.shape[0], -1, features)


FRESH = "fresh"  # dests[FRESH]: the attributes whose destination holds garbage, to overwrite


def _write(dests, attr, value):
    """dests[attr] += value, or = value where the destination is fresh (saves zeroing it)."""
    fresh = dests.get(FRESH, ())
    if attr in fresh:
        dests[attr].copy_(value)
    else:
        dests[attr].add_(value)


def _write_product(dests, attr, u, v):
    """dests[attr] (+)= u ∘ v (broadcast) in one pass, without a temporary."""
    if attr in dests.get(FRESH, ()):
        torch.mul(u, v, out=dests[attr])
    else:
        dests[attr].addcmul_(u, v)


def _products_into(dests, attr, lhs, rhs, shape):
    """dest[:, j] (+)= lhs[j] @ rhs[j] for each objective j, written in place into the (strided)
    destination: lhs [k, B, p, s], rhs [k, B, s, q] (either may be expanded over k), dest
    [B, k, *param shape] seen as ``shape`` = (B, p, q) per objective. (One product per objective
    with ``out=`` is ~4× faster than an einsum into a temporary and a copy, whose batch-first
    layout also costs a permute of the gradients.)"""
    dest = dests[attr]
    fresh = attr in dests.get(FRESH, ())
    for j in range(lhs.shape[0]):
        view = dest[:, j].view(shape)
        if fresh:
            torch.bmm(lhs[j], rhs[j], out=view)
        else:
            view.baddbmm_(lhs[j], rhs[j])


def _outer_into(dests, attr, u, v):
    """dest [B, k, p, q] (+)= u [B, k, p] ⊗ v [B, q]."""
    _write_product(dests, attr, u[..., None], v[:, None, None, :])


def _linear(module, a, g, dests):
    """y = a Wᵀ + b, W [o, i]: per-example ∇W = Σ_s g_s a_sᵀ, ∇b = Σ_s g_s."""
    k, b = g.shape[:2]
    o, i = module.weight.shape
    g4 = g.reshape(k, b, -1, o)
    if "weight" in dests and a.ndim == 2:  # once per example: an outer product
        _outer_into(dests, "weight", g4[:, :, 0].transpose(0, 1), a)
    elif "weight" in dests:
        rhs = _positions(a, i).expand(k, -1, -1, -1)  # [k, B, S, i]
        _products_into(dests, "weight", g4.transpose(2, 3), rhs, (b, o, i))
    if "bias" in dests:
        _write(dests, "bias", g4.sum(2).transpose(0, 1))


def _linear_diag(module, a, g, dests):
    o, i = module.weight.shape
    g2 = g.reshape(g.shape[0], g.shape[1], o).square()
    if "weight" in dests:  # Σ_k (g_k∘g_k) ⊗ (a∘a)
        _write_product(dests, "weight", g2.sum(0)[:, :, None], a.reshape(a.shape[0], 1, i).square())
    if "bias" in dests:
        _write(dests, "bias", g2.sum(0))


def _hf_conv1d(module, a, g, dests):
    """HF Conv1D: y = a W + b with W [i, o]."""
    k, b = g.shape[:2]
    i, o = module.weight.shape
    g4 = g.reshape(k, b, -1, o)
    if "weight" in dests:
        lhs = _positions(a, i).transpose(1, 2).expand(k, -1, -1, -1)  # [k, B, i, S]
        _products_into(dests, "weight", lhs, g4, (b, i, o))
    if "bias" in dests:
        _write(dests, "bias", g4.sum(2).transpose(0, 1))


def _hf_conv1d_diag(module, a, g, dests):
    i, o = module.weight.shape
    g2 = g.reshape(g.shape[0], g.shape[1], o).square()
    if "weight" in dests:
        _write_product(dests, "weight", a.reshape(a.shape[0], i, 1).square(), g2.sum(0)[:, None, :])
    if "bias" in dests:
        _write(dests, "bias", g2.sum(0))


def unfold(a: torch.Tensor, kernel, stride, padding, dilation) -> torch.Tensor:
    """``F.unfold`` of a [B, C, H, W] → [B, C·kh·kw, L] (same values and order): a strided view
    of the zero-padded input [B, C, kh, kw, H_out, W_out] copied once into place (4-6× faster
    than im2col or a one-hot grouped convolution on CPU)."""
    b, c = a.shape[:2]
    (kh, kw), (sh, sw), (ph, pw), (dh, dw) = kernel, stride, padding, dilation
    if ph or pw:
        a = F.pad(a, (pw, pw, ph, ph))
    h_out = (a.shape[2] - dh * (kh - 1) - 1) // sh + 1
    w_out = (a.shape[3] - dw * (kw - 1) - 1) // sw + 1
    s0, s1, s2, s3 = a.stride()
    view = a.as_strided((b, c, kh, kw, h_out, w_out), (s0, s1, dh * s2, dw * s3, sh * s2, sw * s3))
    return view.reshape(b, c * kh * kw, h_out * w_out)


def _conv_cols(module, a: torch.Tensor) -> torch.Tensor:
    """The unfolded input of a Conv1d/Conv2d call → [B, C_in·kernel, L]."""
    if isinstance(module, nn.Conv1d):
        return unfold(
            a.unsqueeze(2),
            (1, module.kernel_size[0]),
            (1, module.stride[0]),
            (0, module.padding[0]),
            (1, module.dilation[0]),
        )
    return unfold(a, module.kernel_size, module.stride, module.padding, module.dilation)


def _conv(module, a, g, dests):
    """Conv1d/Conv2d by unfolding: ∇W[o, (c, kernel)] = Σ_l g[o, l] cols[(c, kernel), l]."""
    k, b = g.shape[:2]
    c_out = module.weight.shape[0]
    if "weight" in dests:
        cols_t = _conv_cols(module, a).transpose(1, 2)  # [B, L, I]
        rhs = cols_t.expand(k, -1, -1, -1)
        _products_into(dests, "weight", g.reshape(k, b, c_out, -1), rhs, (b, c_out, -1))
    if "bias" in dests:
        _write(dests, "bias", g.reshape(k, b, c_out, -1).sum(3).transpose(0, 1))


def _conv_diag(module, a, g, dests):
    """Σ_k ∇W_k² of a Conv1d/Conv2d without copying g into another layout: when g is stored
    batch-first ([B, k, o, L] memory), one product [B, k·o, L] @ colsᵀ [B, L, I]; when it is
    class-major, one objective at a time, g[k] [B, o, L] @ colsᵀ, its square added as it comes."""
    k, b = g.shape[:2]
    c_out = module.weight.shape[0]
    if "weight" in dests:
        cols_t = _conv_cols(module, a).transpose(1, 2)  # [B, L, I]
        batch_first = g.transpose(0, 1)
        if batch_first.is_contiguous():
            gw = torch.bmm(batch_first.reshape(b, k * c_out, -1), cols_t)  # [B, k·o, I]
            acc = gw.square_().view(b, k, c_out, -1).sum(1)
        else:
            g4 = g.reshape(k, b, c_out, -1)
            acc = None
            for j in range(k):
                gw = torch.bmm(g4[j], cols_t)  # [B, o, I]
                acc = gw.square_() if acc is None else acc.addcmul_(gw, gw)
        _write(dests, "weight", acc.reshape(dests["weight"].shape))
    if "bias" in dests:
        _write(dests, "bias", g.reshape(k, b, c_out, -1).sum(3).square().sum(0))


def _embedding(module, ids, g, dests):
    """Rows of the table picked by the example's ids get the output gradients (scatter-add)."""
    if "weight" not in dests:
        return
    k, b = g.shape[:2]
    d = module.embedding_dim
    ids = ids.reshape(b, -1)
    g4 = g.reshape(k, b, -1, d)
    if module.padding_idx is not None:
        g4 = g4 * (ids != module.padding_idx)[None, :, :, None].to(g4.dtype)
    dest = dests["weight"]  # [B, k, V, D]
    if "weight" in dests.get(FRESH, ()):
        dest.zero_()
    index = ids[:, None, :, None].expand(b, k, ids.shape[1], d)
    dest.scatter_add_(2, index, g4.transpose(0, 1))


def _layernorm_hat(module, a):
    return F.layer_norm(a, module.normalized_shape, None, None, module.eps)


def _layernorm(module, a, g, dests):
    """∇γ = Σ_s g_s ∘ x̂_s, ∇β = Σ_s g_s over the positions before the normalised dims."""
    k, b = g.shape[:2]
    n = module.weight.numel()
    g4 = g.reshape(k, b, -1, n)
    if "weight" in dests:
        xhat = _layernorm_hat(module, a).reshape(b, -1, n)
        _write(
            dests, "weight", (g4 * xhat[None]).sum(2).transpose(0, 1).reshape(dests["weight"].shape)
        )
    if "bias" in dests:
        _write(dests, "bias", g4.sum(2).transpose(0, 1).reshape(dests["bias"].shape))


def _layernorm_diag(module, a, g, dests):
    b = g.shape[1]
    g2 = g.reshape(g.shape[0], b, -1).square()
    if "weight" in dests:
        xhat2 = _layernorm_hat(module, a).reshape(b, -1).square()
        _write(dests, "weight", (g2.sum(0) * xhat2).reshape(dests["weight"].shape))
    if "bias" in dests:
        _write(dests, "bias", g2.sum(0).reshape(dests["bias"].shape))


Rule = Callable[[nn.Module, torch.Tensor, torch.Tensor, dict[str, torch.Tensor]], None]

RULES: dict[str, Rule] = {
    "linear": _linear,
    "hf_conv1d": _hf_conv1d,
    "conv": _conv,
    "embedding": _embedding,
    "layernorm": _layernorm,
}

DIAG_RULES: dict[str, Rule] = {
    "linear": _linear_diag,
    "hf_conv1d": _hf_conv1d_diag,
    "conv": _conv_diag,
    "layernorm": _layernorm_diag,
}


def diag_rule_applies(rule: str, module: nn.Module, a: torch.Tensor) -> bool:
    """The layer's D-PEF rule applies to this call: it has no positions sharing the weight (the
    Σ_k (g_k∘g_k) ⊗ (a∘a) shortcut), or it is a convolution, whose rule squares per-class
    gradients itself."""
    if rule not in DIAG_RULES:
        return False
    if rule == "conv":
        return True
    if rule == "layernorm":
        return a.ndim == 1 + len(module.normalized_shape)
    return a.ndim == 2
