"""Small networks with known structure for the layer and channel attribution tests."""

from __future__ import annotations

import torch
from torch import nn


class LinearAfter(nn.Module):
    """conv -> ReLU (``act``) -> flatten -> linear: the network is linear after ``act``."""

    def __init__(self, channels: int = 4, size: int = 8, classes: int = 3) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, channels, 3, padding=1)
        self.act = nn.ReLU()
        self.fc = nn.Linear(channels * size * size, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.act(self.conv(x)).flatten(1))

    def weight_map(self, target: int, shape: torch.Size) -> torch.Tensor:
        """The linear head's weights for ``target`` as a ``(C, h, w)`` map."""
        return self.fc.weight[target].detach().view(shape)


class Mixer(nn.Module):
    """conv (8 channels) -> 1x1 channel mixing -> ReLU -> pool -> linear: channels interact after ``conv``."""

    def __init__(self, channels: int = 8, classes: int = 3) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, channels, 3, padding=1)
        self.mix = nn.Conv2d(channels, 6, 1)
        self.act = nn.ReLU()
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(6, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.pool(self.act(self.mix(self.conv(x)))).flatten(1))


class Reversed(nn.Module):
    """Modules defined in the opposite order to the one they run in."""

    def __init__(self) -> None:
        super().__init__()
        self.late = nn.Conv2d(3, 4, 3, padding=1)
        self.early = nn.Conv2d(3, 3, 3, padding=1)
        self.fc = nn.Linear(4, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(torch.relu(self.late(torch.relu(self.early(x)))).mean(dim=(2, 3)))


def seeded(cls: type[nn.Module], seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return cls().eval()
