"""Toy classifiers with a planted cue, and a toy scene: a textured disk on a grey background.

* :class:`ColourModel` reads only texture: the mean colour of the whole image (red, blue or grey).
* :class:`SilhouetteModel` reads only shape: the dark pixels (luminance, so colour-blind) compared
  with a centred disk; it says ``none`` when they do not form that disk.
* :class:`CornerModel` reads only the top-left quadrant's redness (a part that is needed).

Inputs are in ``[0, 1]`` (the preprocessing's mean 0 and std 1), so the toys see raw colours.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from cnnlens.data.transforms import Preprocessing
from cnnlens.models import LoadedModel

SIZE = 64
RADIUS = 20


def disk(size: int = SIZE, radius: float = RADIUS) -> np.ndarray:
    yy, xx = np.mgrid[:size, :size]
    return (yy - (size - 1) / 2) ** 2 + (xx - (size - 1) / 2) ** 2 <= radius**2


def texture(colour: tuple[float, float, float], seed: int, size: int = SIZE) -> np.ndarray:
    """A dark noisy texture around ``colour`` (uint8); its luminance stays below 0.3."""
    rng = np.random.default_rng(seed)
    base = np.array(colour)[None, None, :] + rng.uniform(-0.05, 0.05, (size, size, 3))
    return (np.clip(base, 0, 1) * 255).round().astype(np.uint8)


RED = (0.45, 0.08, 0.05)
BLUE = (0.05, 0.08, 0.45)


def scene(colour: tuple[float, float, float] = RED, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """A disk of ``colour`` texture on grey (128), and its mask."""
    mask = disk()
    img = np.where(mask[..., None], texture(colour, seed), np.uint8(128)).astype(np.uint8)
    return img, mask


class ColourModel(nn.Module):
    """Logits ``40 * (R - B, B - R, 0.02 - |R - B|)`` of the mean colour: red, blue, grey."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        m = x.mean(dim=(2, 3))
        d = m[:, 0] - m[:, 2]
        return 40 * torch.stack([d, -d, 0.02 - d.abs()], dim=1)


class SilhouetteModel(nn.Module):
    """Dark pixels (luminance < 0.4) against a centred disk template: logits
    ``20 * (cosine(dark, disk), 0.7)`` for disk and none."""

    def __init__(self) -> None:
        super().__init__()
        self.register_buffer("template", torch.from_numpy(disk()).float())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        lum = 0.299 * x[:, 0] + 0.587 * x[:, 1] + 0.114 * x[:, 2]
        dark = (lum < 0.4).float()
        t = self.template
        cos = (dark * t).sum((1, 2)) / (dark.sum((1, 2)).clamp_min(1) * t.sum()).sqrt()
        return 20 * torch.stack([cos, torch.full_like(cos, 0.7)], dim=1)


class CornerModel(nn.Module):
    """Logits ``40 * (R - B, 0.02)`` of the top-left quadrant's mean colour: red, other."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h, w = x.shape[2] // 2, x.shape[3] // 2
        m = x[:, :, :h, :w].mean(dim=(2, 3))
        return 40 * torch.stack([m[:, 0] - m[:, 2], torch.full_like(m[:, 0], 0.02)], dim=1)


def loaded(module: nn.Module, classes: list[str]) -> LoadedModel:
    return LoadedModel(
        module=module.eval(),
        name=type(module).__name__,
        arch="toy",
        class_names=classes,
        preprocessing=Preprocessing(resize=None, crop=SIZE, mean=(0.0,) * 3, std=(1.0,) * 3),
        default_layer=None,
        source="test",
    )


def colour_model() -> LoadedModel:
    return loaded(ColourModel(), ["red", "blue", "grey"])


def silhouette_model() -> LoadedModel:
    return loaded(SilhouetteModel(), ["disk", "none"])


def corner_model() -> LoadedModel:
    return loaded(CornerModel(), ["red corner", "other"])
