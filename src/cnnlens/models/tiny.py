"""``tinycnn``: a small CNN trained from scratch, for tests, synthetic data and quick experiments.

Three conv-BN-ReLU blocks (16, 32, 64 channels; the last two stride 2), global average pooling and a
linear classifier: about 25k parameters. It is fully convolutional, so it accepts any input size;
its preprocessing resizes to 48 px (mean 0.5, std 0.25). It has no pretrained weights: "pretrained"
gives the seeded random initialisation, and a trained run folder is what you explain.
"""

from __future__ import annotations

import torch
from torch import nn

from cnnlens.data.transforms import Preprocessing

TINY_PREPROCESSING = Preprocessing(resize=48, crop=48, mean=(0.5, 0.5, 0.5), std=(0.25, 0.25, 0.25))


def _block(cin: int, cout: int, stride: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(cin, cout, 3, stride=stride, padding=1, bias=False), nn.BatchNorm2d(cout), nn.ReLU()
    )


class TinyCNN(nn.Module):
    """conv(16)-conv(32, /2)-conv(64, /2), global average pool, linear.

    Args:
        num_classes: Number of outputs.
        channels: Input channels.
    """

    def __init__(self, num_classes: int = 10, channels: int = 3) -> None:
        super().__init__()
        self.features = nn.Sequential(_block(channels, 16, 1), _block(16, 32, 2), _block(32, 64, 2))
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Linear(64, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Shape: ``(N, C, H, W) -> (N, num_classes)``."""
        return self.classifier(self.pool(self.features(x)).flatten(1))
