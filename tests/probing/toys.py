"""Planted truths for the probing tools: a unit wired to respond to one pattern."""

from __future__ import annotations

import torch
from torch import nn

#: The pattern unit 0 of :class:`CrossDetector` responds to: a plus sign (centre row and column).
CROSS = torch.tensor([[0.0, 1.0, 0.0], [1.0, 1.0, 1.0], [0.0, 1.0, 0.0]])


class CrossDetector(nn.Module):
    """``conv`` (3x3, padding 1) -> ReLU -> mean -> linear. Unit 0 of ``conv`` is +1 on a cross and -1
    on the corners (on every colour), so a cross scores 15 and a filled 3x3 square only 3; unit 1 sums
    the red channel."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 2, 3, padding=1, bias=False)
        self.act = nn.ReLU()
        self.fc = nn.Linear(2, 2)
        with torch.no_grad():
            self.conv.weight.zero_()
            self.conv.weight[0] = (2 * CROSS - 1).expand(3, 3, 3)
            self.conv.weight[1, 0] = 1.0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.act(self.conv(x)).mean(dim=(2, 3)))


def noise(count: int, size: int = 24, seed: int = 0) -> torch.Tensor:
    """``(count, 3, size, size)`` dim noise in [0, 0.1)."""
    g = torch.Generator().manual_seed(seed)
    return torch.rand(count, 3, size, size, generator=g) * 0.1


def stamp(x: torch.Tensor, image: int, row: int, col: int, pattern: torch.Tensor) -> None:
    """Draw a 3x3 ``pattern`` (value 1) centred at ``(row, col)`` of one image, on every colour."""
    x[image, :, row - 1 : row + 2, col - 1 : col + 2] = torch.maximum(
        x[image, :, row - 1 : row + 2, col - 1 : col + 2], pattern
    )
