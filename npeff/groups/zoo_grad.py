"""The zoo's loss and its gradients, written out by hand and cache-blocked (no autograd graph).

For stacked ``GroupMLP`` parameters ``{key: [S, ...]}`` (see :mod:`npeff.groups.zoo`) and one
full batch (x, y, labels) of B inputs, with D the embedding width, H the hidden width and N the
number of classes:

    L = E_l W_lᵀ + c,  R = E_r W_rᵀ                       # [S, N, H]
    a = ReLU(L[x] + R[y])                                  # [S, B, H]
    logits = a Uᵀ + u                                      # [S, B, N]
    loss = Σ_s mean_b CE(logits[s, b], labels[b])

    P = softmax(logits) − onehot(labels)                   # [S, B, N]  (= B · ∂loss/∂logits)
    ∂U = Pᵀ a / B,  ∂u = Σ_b P / B,  ∂a = P U,  ∂pre = ∂a · [a > 0]
    ∂L = scatter_x(∂pre) / B,  ∂R = scatter_y(∂pre) / B,  ∂c = Σ_n ∂L
    ∂E_l = ∂L W_l,  ∂W_l = ∂Lᵀ E_l  (and the same on the right)

The B inputs are processed in blocks of about ``block`` rows per seed (several seeds per block
when B is small), so each block's activations and logits stay in cache and are updated in
place: one gather-add, one ReLU, one softmax and one mask per element, against about twice as
many passes through memory (and an [S, B, H] index-put) for the autograd graph of the same
forward. Gradients equal autograd's (tested in float64).
"""

from __future__ import annotations

from collections.abc import Mapping

import torch

from npeff.models.simple import (
    GROUP_HIDDEN_BIAS,
    GROUP_HIDDEN_WEIGHT,
    GROUP_UNEMBED_BIAS,
    GROUP_UNEMBED_WEIGHT,
)

BLOCK_ROWS = 2048  # rows (seed × input) per block: ~1 MiB of float32 activations at H = 128
LEFT, RIGHT = f"{GROUP_HIDDEN_WEIGHT}.left", f"{GROUP_HIDDEN_WEIGHT}.right"


def split_hidden(params: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """``params`` with ``hidden.weight`` [S, H, 2D] replaced by its halves ``LEFT``/``RIGHT``
    [S, H, D] (contiguous copies: the trainer optimises them as two tensors, so no gradient
    has to be concatenated every step)."""
    out = {k: v for k, v in params.items() if k != GROUP_HIDDEN_WEIGHT}
    w, d = params[GROUP_HIDDEN_WEIGHT], params["embed_left"].shape[-1]
    out[LEFT], out[RIGHT] = w[..., :d].contiguous(), w[..., d:].contiguous()
    return out


def join_hidden(params: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Inverse of :func:`split_hidden`: ``GroupMLP`` keys, ``hidden.weight`` [S, H, 2D]."""
    out = {k: v for k, v in params.items() if k not in (LEFT, RIGHT)}
    out[GROUP_HIDDEN_WEIGHT] = torch.cat([params[LEFT], params[RIGHT]], -1)
    return out


def _blocks(n_seeds: int, n_rows: int, block: int):
    """(seed slice, row slice) pairs covering [S] × [B] with about ``block`` seed-rows each."""
    if n_rows >= block:
        for s in range(n_seeds):
            for a in range(0, n_rows, block):
                yield slice(s, s + 1), slice(a, min(n_rows, a + block))
    else:
        per = max(1, block // max(n_rows, 1))
        for s in range(0, n_seeds, per):
            yield slice(s, min(n_seeds, s + per)), slice(0, n_rows)


@torch.no_grad()
def zoo_loss_and_grads(
    params: Mapping[str, torch.Tensor],
    x: torch.Tensor,
    y: torch.Tensor,
    labels: torch.Tensor,
    block: int = BLOCK_ROWS,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """(Σ_s mean cross-entropy of model s, its gradient ``{key: [S, ...]}``), as autograd of
    ``zoo_logits`` + ``cross_entropy`` would give them. x, y, labels: int64 ``[B]``.

    ``params`` has either ``GroupMLP`` keys or the split form of :func:`split_hidden`; the
    gradient has the same keys as ``params``."""
    if GROUP_HIDDEN_WEIGHT in params:
        loss, grads = zoo_loss_and_grads(split_hidden(params), x, y, labels, block)
        return loss, join_hidden(grads)
    El, Er = params["embed_left"], params["embed_right"]  # [S, N, D]
    Wl, Wr = params[LEFT], params[RIGHT]  # [S, H, D]
    c, U = params[GROUP_HIDDEN_BIAS], params[GROUP_UNEMBED_WEIGHT]
    ub = params.get(GROUP_UNEMBED_BIAS)  # [S, N] or None
    n_seeds = El.shape[0]
    L = torch.baddbmm(c[:, None, :], El, Wl.transpose(1, 2))  # [S, N, H]
    R = torch.bmm(Er, Wr.transpose(1, 2))
    Ut = U.transpose(1, 2)  # [S, H, N]
    dL, dR, dU = torch.zeros_like(L), torch.zeros_like(R), torch.zeros_like(U)
    dub = torch.zeros(U.shape[:2], dtype=U.dtype)
    loss = torch.zeros((), dtype=U.dtype)
    n_rows = int(labels.shape[0])
    n_cls, hid = L.shape[1], L.shape[2]
    for ss, rs in _blocks(n_seeds, n_rows, block):
        # rows of the block's seeds' tables flattened to [s·N, H]: 2-D gathers and index-adds
        # along dim 0 are about twice as fast as along dim 1 of [s, N, H]
        base = torch.arange(ss.start, ss.stop)[:, None] * n_cls  # [s, 1]
        xb, yb = (base + x[rs]).reshape(-1), (base + y[rs]).reshape(-1)  # [s·b]
        n_s = ss.stop - ss.start
        act = L.view(-1, hid).index_select(0, xb).view(n_s, -1, hid)  # [s, b, H]
        act += R.view(-1, hid).index_select(0, yb).view(n_s, -1, hid)
        act.relu_()
        lg = torch.bmm(act, Ut[ss]) if ub is None else torch.baddbmm(ub[ss, None, :], act, Ut[ss])
        lse = torch.logsumexp(lg, -1, keepdim=True)  # [s, b, 1]
        lab = labels[rs].view(1, -1, 1).expand(lg.shape[0], -1, 1)
        loss += lse.sum() - lg.gather(2, lab).sum()
        lg.sub_(lse).exp_()  # softmax in place
        lg.scatter_add_(2, lab, torch.full(lab.shape, -1.0, dtype=lg.dtype))  # − onehot
        dU[ss].baddbmm_(lg.transpose(1, 2), act)
        dub[ss] += lg.sum(1)
        da = torch.ops.aten.threshold_backward(torch.bmm(lg, U[ss]), act, 0.0)  # [s, b, H]
        dL.view(-1, hid).index_add_(0, xb, da.view(-1, hid))
        dR.view(-1, hid).index_add_(0, yb, da.view(-1, hid))
    inv = 1.0 / max(n_rows, 1)
    dL.mul_(inv)
    dR.mul_(inv)
    grads = {
        "embed_left": torch.bmm(dL, Wl),
        "embed_right": torch.bmm(dR, Wr),
        LEFT: torch.bmm(dL.transpose(1, 2), El),
        RIGHT: torch.bmm(dR.transpose(1, 2), Er),
        GROUP_HIDDEN_BIAS: dL.sum(1),
        GROUP_UNEMBED_WEIGHT: dU.mul_(inv),
    }
    if ub is not None:
        grads[GROUP_UNEMBED_BIAS] = dub.mul_(inv)
    return loss * inv, grads
