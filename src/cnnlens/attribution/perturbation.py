"""Perturbation methods: change parts of the input and watch the target score."""

from __future__ import annotations

from collections.abc import Iterator

import torch

from cnnlens.attribution.base import SCORES, Attribution, ModelLike
from cnnlens.attribution.registry import register


def window_starts(size: int, window: int, stride: int) -> list[int]:
    """Start positions of a sliding window along one axis; the last window always reaches the end."""
    starts = list(range(0, max(size - window, 0) + 1, stride))
    if starts[-1] + window < size:
        starts.append(size - window)
    return starts


@register
class Occlusion(Attribution):
    """Occlusion: slide a square of constant value over the image and record the score drop.

    Each pixel gets the mean drop of the target score over the windows that cover it. Perturbed
    images are evaluated ``batch_size`` at a time.

    Shape:
        A ``(N, H, W)`` signed map: positive where hiding the pixels lowers the score.

    References:
        Zeiler, Fergus. Visualizing and Understanding Convolutional Networks. ECCV 2014.
    """

    name = "occlusion"
    family = "perturbation"
    summary = "score drop when a sliding window is hidden"
    reference = "Zeiler & Fergus 2014"
    signed = True

    def __init__(
        self,
        model: ModelLike,
        *,
        window: int = 32,
        stride: int = 16,
        fill: float = 0.0,
        score: str = "logit",
        batch_size: int | None = None,
    ):
        super().__init__(model, batch_size=batch_size)
        if window < 1 or stride < 1:
            raise ValueError(f"window and stride must be positive, got window={window}, stride={stride}")
        if score not in SCORES:
            raise ValueError(f"score must be one of {', '.join(SCORES)}, got {score!r}")
        self.window = window
        self.stride = stride
        self.fill = fill
        self.score = score

    def windows(self, height: int, width: int) -> list[tuple[int, int, int, int]]:
        """Every window as ``(top, left, height, width)``."""
        wh, ww = min(self.window, height), min(self.window, width)
        return [
            (y, x, wh, ww)
            for y in window_starts(height, wh, self.stride)
            for x in window_starts(width, ww, self.stride)
        ]

    def _batches(
        self, image: torch.Tensor, windows: list[tuple[int, int, int, int]], batch_size: int
    ) -> Iterator[torch.Tensor]:
        for i in range(0, len(windows), batch_size):
            chunk = windows[i : i + batch_size]
            batch = image.expand(len(chunk), *image.shape).clone()
            for j, (y, x, h, w) in enumerate(chunk):
                batch[j, :, y : y + h, x : x + w] = self.fill
            yield batch

    def _attribute(self, inputs: torch.Tensor, targets: torch.Tensor, batch_size: int) -> torch.Tensor:
        _, _, height, width = inputs.shape
        windows = self.windows(height, width)
        count = torch.zeros(height, width, device=inputs.device)
        for y, x, h, w in windows:
            count[y : y + h, x : x + w] += 1
        maps = torch.zeros(len(inputs), height, width, device=inputs.device)
        for i, (image, target) in enumerate(zip(inputs, targets.tolist())):
            base = self.scores_of(iter([image[None]]), target, self.score)
            drops = base - self.scores_of(self._batches(image, windows, batch_size), target, self.score)
            for (y, x, h, w), d in zip(windows, drops.tolist()):
                maps[i, y : y + h, x : x + w] += d
        return maps / count
