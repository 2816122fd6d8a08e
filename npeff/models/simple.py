"""Plain-torch models: MLP, a small CNN with BatchNorm, and the group-operation network."""

from __future__ import annotations

import torch
from torch import nn


class MLP(nn.Module):
    """``x [B, ...] -> logits [B, C]``: flatten, then Linear/ReLU layers."""

    def __init__(
        self,
        num_classes: int,
        in_features: int,
        hidden_sizes: list[int] | tuple[int, ...] = (128, 128),
    ):
        super().__init__()
        layers: list[nn.Module] = []
        width = int(in_features)
        for h in hidden_sizes:
            layers += [nn.Linear(width, int(h)), nn.ReLU()]
            width = int(h)
        layers.append(nn.Linear(width, int(num_classes)))
        self.net = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x if x.is_floating_point() else x.float()
        return self.net(x.flatten(1))


class SmallCNN(nn.Module):
    """``x [B, C_in, H, W] -> logits [B, C]``: two conv/BatchNorm/ReLU blocks, a pool, two linears.

    In eval mode BatchNorm uses its running statistics, so per-example gradients under
    ``torch.func.vmap`` work (put the model in eval mode first).
    """

    def __init__(
        self,
        num_classes: int,
        in_channels: int = 1,
        image_size: int = 8,
        channels: tuple[int, int] = (16, 32),
        hidden: int = 64,
    ):
        super().__init__()
        c1, c2 = (int(c) for c in channels)
        self.features = nn.Sequential(
            nn.Conv2d(int(in_channels), c1, 3, padding=1),
            nn.BatchNorm2d(c1),
            nn.ReLU(),
            nn.Conv2d(c1, c2, 3, padding=1),
            nn.BatchNorm2d(c2),
            nn.ReLU(),
            nn.MaxPool2d(2),
        )
        side = int(image_size) // 2
        self.head = nn.Sequential(
            nn.Flatten(),
            nn.Linear(c2 * side * side, int(hidden)),
            nn.ReLU(),
            nn.Linear(int(hidden), int(num_classes)),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x if x.is_floating_point() else x.float()
        return self.head(self.features(x))


# GroupMLP's parameter names (state-dict keys): the one spelling for the code that reads its
# weights (npeff.groups: folding, neuron ownership, the zoo's stacked parameters).
GROUP_HIDDEN_WEIGHT = "hidden.weight"  # [H, 2D]: row i = neuron i (its unit, models.units)
GROUP_HIDDEN_BIAS = "hidden.bias"  # [H]
GROUP_UNEMBED_WEIGHT = "unembed.weight"  # [N, H]: column i = neuron i
GROUP_UNEMBED_BIAS = "unembed.bias"  # [N]
GROUP_MLP_PARAMETERS = (
    "embed_left",
    "embed_right",
    GROUP_HIDDEN_WEIGHT,
    GROUP_HIDDEN_BIAS,
    GROUP_UNEMBED_WEIGHT,
    GROUP_UNEMBED_BIAS,
)


class GroupMLP(nn.Module):
    """The one-hidden-layer group-operation network (seed-systems.md §2.1).

    ``logits(z | x, y) = unembed(ReLU(W [E_l x ; E_r y] + b))(z)``, i.e. after folding
    ``Σ_i u_i(z) ReLU(l_i(x) + r_i(y)) + b(z)``. Inputs ``x``, ``y``: int64 ``[B]``.
    """

    def __init__(
        self,
        num_classes: int,
        group_order: int,
        embed_dim: int = 256,
        hidden: int = 128,
        unembed_bias: bool = True,
    ):
        super().__init__()
        n, d, h = int(group_order), int(embed_dim), int(hidden)
        self.embed_left = nn.Parameter(torch.empty(n, d))
        self.embed_right = nn.Parameter(torch.empty(n, d))
        self.hidden = nn.Linear(2 * d, h)
        self.unembed = nn.Linear(h, int(num_classes), bias=bool(unembed_bias))
        # Unit-scale embeddings (nn.Embedding's default): with small (fan-in scaled) ones the
        # S4 network memorised the train half and stalled near 95 % held-out accuracy here.
        for w in (self.embed_left, self.embed_right):
            nn.init.normal_(w)

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        e = torch.cat([self.embed_left[x], self.embed_right[y]], dim=-1)
        return self.unembed(torch.relu(self.hidden(e)))
