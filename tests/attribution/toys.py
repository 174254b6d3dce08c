"""Toy networks with known answers for the perturbation and surrogate tests."""

from __future__ import annotations

import torch
from torch import nn


class CellLinear(nn.Module):
    """Logit ``k`` = ``sum_j weight[k, j] * mean(channel 0 over grid cell j)``: linear in cell switches.

    With an all-ones image, the ``"grid"`` segmentation of the same cell size and the ``"zero"``
    fill, showing cell ``j`` adds exactly ``weight[k, j]`` to logit ``k``.
    """

    def __init__(self, weight: torch.Tensor, cell: int) -> None:
        super().__init__()
        self.pool = nn.AvgPool2d(cell)
        self.fc = nn.Linear(weight.shape[1], weight.shape[0], bias=True)
        with torch.no_grad():
            self.fc.weight.copy_(weight)
            self.fc.bias.fill_(0.3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.pool(x[:, :1]).flatten(1))


class ReadsOneRegion(nn.Module):
    """Two classes: logits +/- 4 (mean of channel 0 - 0.5) over ``[top:top+size, left:left+size]``."""

    def __init__(self, top: int, left: int, size: int) -> None:
        super().__init__()
        self.box = (top, left, size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        top, left, size = self.box
        s = (x[:, 0, top : top + size, left : left + size].mean(dim=(1, 2)) - 0.5) * 4
        return torch.stack([s, -s], dim=1)


class LeftRightCAM(nn.Module):
    """A 1x1 identity conv ``features`` on 2 channels, GAP, and a head that reads channel 0 only."""

    def __init__(self) -> None:
        super().__init__()
        self.features = nn.Conv2d(2, 2, 1, bias=False)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(2, 2)
        with torch.no_grad():
            self.features.weight.copy_(torch.eye(2).view(2, 2, 1, 1))
            self.fc.weight.copy_(torch.tensor([[3.0, 0.0], [-3.0, 0.0]]))
            self.fc.bias.zero_()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.pool(self.features(x)).flatten(1))


def left_right_image(size: int = 16) -> torch.Tensor:
    """Channel 0 lit on the left half, channel 1 on the right half: ``(1, 2, size, size)``."""
    x = torch.zeros(1, 2, size, size)
    x[0, 0, :, : size // 2] = 1.0
    x[0, 1, :, size // 2 :] = 1.0
    return x
