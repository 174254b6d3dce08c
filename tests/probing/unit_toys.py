"""Toy networks with units wired to respond to one pattern (planted truths for the probing tools)."""

from __future__ import annotations

import torch
from torch import nn

from cnnlens.data.transforms import Preprocessing

#: Preprocessing of the toys: no resize, values ``4 v - 2`` (mean 0.5, std 0.25).
TOY_PREPROCESSING = Preprocessing(resize=None, crop=32, mean=(0.5, 0.5, 0.5), std=(0.25, 0.25, 0.25))


class ColourUnits(nn.Module):
    """``units`` (1x1 conv + ReLU): unit 0 fires on red, unit 1 on green, unit 2 on blue pixels of the
    concept set (:data:`cnnlens.data.concepts.COLOURS`), unit 3 never; then a pooled linear head."""

    def __init__(self) -> None:
        super().__init__()
        conv = nn.Conv2d(3, 4, 1)
        with torch.no_grad():
            conv.weight.zero_()
            conv.bias.zero_()
            for unit, (plus, minus) in enumerate([(0, 1), (1, 0), (2, 1)]):
                conv.weight[unit, plus] = 1.0
                conv.weight[unit, minus] = -1.0
                conv.bias[unit] = -1.0
        self.units = nn.Sequential(conv, nn.ReLU())
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(4, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.pool(self.units(x)).flatten(1))


def cross_template(side: int = 7) -> torch.Tensor:
    """A plus sign, ``(side, side)`` with values +1 on the cross and -1 elsewhere, zero mean."""
    t = -torch.ones(side, side)
    t[side // 2, :] = 1.0
    t[:, side // 2] = 1.0
    return t - t.mean()


class CrossDetector(nn.Module):
    """``features``: conv (the cross template on the red channel, minus green and blue) + ReLU, then
    a second conv and ReLU; unit 0 of ``features.1`` fires on a red plus sign, unit 1 is random."""

    def __init__(self, side: int = 7) -> None:
        super().__init__()
        conv = nn.Conv2d(3, 2, side, padding=side // 2)
        with torch.no_grad():
            g = torch.Generator().manual_seed(0)
            conv.weight.copy_(0.1 * torch.randn(conv.weight.shape, generator=g))
            t = cross_template(side) / side
            conv.weight[0] = torch.stack([t, -t / 2, -t / 2])
            conv.bias.zero_()
        self.features = nn.Sequential(conv, nn.ReLU())
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(2, 2)  # logit k = mean of unit k
        with torch.no_grad():
            self.fc.weight.copy_(torch.eye(2))
            self.fc.bias.zero_()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.pool(self.features(x)).flatten(1))
