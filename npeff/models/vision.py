"""torchvision classifiers by name, used only when torchvision imports (environment.md)."""

from __future__ import annotations

import torch
from torch import nn

from npeff.errors import NpeffUserError


def torchvision_available() -> bool:
    try:
        import torchvision  # noqa: F401
    except Exception:  # noqa: BLE001 - a broken install raises RuntimeError, not ImportError
        return False
    return True


class TorchvisionClassifier(nn.Module):
    """``x [B, C_in, H, W] -> logits``; repeats a single channel when the network wants 3."""

    def __init__(self, net: nn.Module, in_channels: int, min_size: int):
        super().__init__()
        self.net, self.in_channels, self.min_size = net, in_channels, min_size

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x if x.is_floating_point() else x.float()
        if x.shape[1] == 1 and self.in_channels == 3:
            x = x.expand(-1, 3, -1, -1)
        if x.shape[-1] < self.min_size:
            x = nn.functional.interpolate(x, size=(self.min_size, self.min_size), mode="bilinear")
        return self.net(x)


def build_torchvision(
    num_classes: int, arch: str = "resnet18", in_channels: int = 3, min_size: int = 32
) -> nn.Module:
    """``torchvision.models.get_model(arch, weights=None, num_classes=...)`` (random init)."""
    try:
        import torchvision
    except Exception as e:  # noqa: BLE001
        raise RuntimeError(
            f"model 'torchvision' needs a working torchvision (pip install -e '.[vision]'); import failed: {e}"
        ) from None
    available = torchvision.models.list_models()
    if arch not in available:
        raise NpeffUserError(f"unknown torchvision arch {arch!r}; available: {available}")
    net = torchvision.models.get_model(arch, weights=None, num_classes=int(num_classes))
    return TorchvisionClassifier(net, int(in_channels), int(min_size))
