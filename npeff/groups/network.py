"""A group network's folded per-neuron functions (seed-systems.md §2.1).

``logit(z | x, y) = Σ_i U[z, i] · ReLU(L[x, i] + R[y, i]) + b[z]`` with
``L = E_l W_lᵀ + c`` (the hidden bias folded into the left side), ``R = E_r W_rᵀ``, ``U`` the
unembedding weight and ``b`` its bias. All arrays float64: L, R, U ``[N, H]``, b ``[N]``.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import torch

from npeff.models.simple import (
    GROUP_HIDDEN_BIAS,
    GROUP_HIDDEN_WEIGHT,
    GROUP_UNEMBED_BIAS,
    GROUP_UNEMBED_WEIGHT,
)


@dataclass
class FoldedNetwork:
    left: torch.Tensor  # [N, H], hidden bias included
    right: torch.Tensor  # [N, H]
    unembed: torch.Tensor  # [N, H]
    bias: torch.Tensor  # [N]

    @property
    def n_neurons(self) -> int:
        return int(self.left.shape[1])

    @property
    def order(self) -> int:
        return int(self.left.shape[0])


def fold(state: Mapping[str, torch.Tensor]) -> FoldedNetwork:
    """Fold one ``GroupMLP`` state dict into L, R, U, b (float64)."""
    w = state[GROUP_HIDDEN_WEIGHT].double()
    d = state["embed_left"].shape[-1]
    left = state["embed_left"].double() @ w[:, :d].T + state[GROUP_HIDDEN_BIAS].double()
    right = state["embed_right"].double() @ w[:, d:].T
    u = state[GROUP_UNEMBED_WEIGHT].double()
    b = state.get(GROUP_UNEMBED_BIAS)
    b = torch.zeros(u.shape[0], dtype=torch.float64) if b is None else b.double()
    return FoldedNetwork(left, right, u, b)


def seed_state(params: Mapping[str, torch.Tensor], s: int) -> dict[str, torch.Tensor]:
    """Model s of stacked zoo parameters ``{key: [S, ...]}``."""
    return {k: v[s] for k, v in params.items()}


@torch.no_grad()
def all_logits(net: FoldedNetwork, chunk: int = 2048, dtype=torch.float32) -> torch.Tensor:
    """Brute force: logits ``[N*N, N]`` of every input (row ``x * N + y``)."""
    n = net.order
    L, R, U, b = (t.to(dtype) for t in (net.left, net.right, net.unembed, net.bias))
    out = torch.empty(n * n, n, dtype=dtype)
    xs = torch.arange(n * n) // n
    ys = torch.arange(n * n) % n
    for a in range(0, n * n, chunk):
        pre = L[xs[a : a + chunk]] + R[ys[a : a + chunk]]
        out[a : a + chunk] = torch.relu(pre) @ U.T + b
    return out


@torch.no_grad()
def brute_force_accuracy(net: FoldedNetwork, table, chunk: int = 2048) -> float:
    """Share of all |G|² inputs whose argmax logit is ``table[x, y]`` (ties count as wrong)."""
    n = net.order
    tab = torch.as_tensor(table).reshape(-1)
    L, R, U, b = (t.float() for t in (net.left, net.right, net.unembed, net.bias))
    xs = torch.arange(n * n) // n
    ys = torch.arange(n * n) % n
    correct = 0
    for a in range(0, n * n, chunk):
        logits = torch.relu(L[xs[a : a + chunk]] + R[ys[a : a + chunk]]) @ U.T + b
        t = tab[a : a + chunk]
        right = logits.gather(1, t[:, None])[:, 0]
        logits.scatter_(1, t[:, None], -float("inf"))
        correct += int((right > logits.max(1).values).sum())
    return correct / (n * n)
