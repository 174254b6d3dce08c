"""Preprocessing carried by every model: resize, centre crop, normalisation.

The same object also maps the model-input view back onto the original photograph, so that overlays
can be drawn at the original resolution.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import torch
from PIL import Image
from torchvision.transforms import InterpolationMode
from torchvision.transforms import functional as TF

from cnnlens.errors import InputError

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


@dataclass(frozen=True)
class Preprocessing:
    """How a model wants its images: resize the short side, centre-crop, normalise.

    Attributes:
        resize: Length of the short side after resizing (``None``: no resize).
        crop: Side of the square centre crop, which is the model's input size.
        mean: Per-channel mean subtracted after scaling to [0, 1].
        std: Per-channel standard deviation divided by.
        interpolation: ``"bilinear"`` or ``"bicubic"``.
    """

    resize: int | None = 256
    crop: int = 224
    mean: tuple[float, ...] = IMAGENET_MEAN
    std: tuple[float, ...] = IMAGENET_STD
    interpolation: str = "bilinear"
    channels: int = field(default=3)

    def __post_init__(self) -> None:
        if self.crop <= 0 or (self.resize is not None and self.resize < self.crop):
            raise InputError(
                f"invalid preprocessing: resize={self.resize}, crop={self.crop}; "
                "expected crop > 0 and resize >= crop"
            )
        if len(self.mean) != len(self.std) or any(s <= 0 for s in self.std):
            raise InputError(f"invalid normalisation mean={self.mean} std={self.std}")

    @property
    def input_size(self) -> tuple[int, int]:
        """Height and width of the tensor the model receives."""
        return (self.crop, self.crop)

    def view(self, image: Image.Image) -> Image.Image:
        """The RGB image exactly as the model sees it (resized and cropped, not normalised)."""
        mode = InterpolationMode(self.interpolation)
        if self.resize is not None:
            image = TF.resize(image, self.resize, interpolation=mode, antialias=True)
        out: Image.Image = TF.center_crop(image, [self.crop, self.crop])
        return out

    def __call__(self, image: Image.Image) -> torch.Tensor:
        """Turn an RGB image into a normalised ``(C, H, W)`` float tensor."""
        t = TF.to_tensor(self.view(image))
        if self.channels == 1 and t.shape[0] == 3:
            t = TF.rgb_to_grayscale(t)
        return TF.normalize(t, list(self.mean), list(self.std))

    def batch(self, images: list[Image.Image]) -> torch.Tensor:
        """Stack several images into one ``(N, C, H, W)`` batch."""
        return torch.stack([self(im) for im in images])

    def denormalize(self, x: torch.Tensor) -> torch.Tensor:
        """Undo the normalisation of a ``(C, H, W)`` or ``(N, C, H, W)`` tensor (values in [0, 1])."""
        shape = (-1, 1, 1)
        mean = torch.tensor(self.mean, dtype=x.dtype, device=x.device).view(shape)
        std = torch.tensor(self.std, dtype=x.dtype, device=x.device).view(shape)
        return (x * std + mean).clamp(0, 1)

    def crop_box(self, size: tuple[int, int]) -> tuple[int, int, int, int]:
        """The box ``(left, top, right, bottom)`` of an image of ``size`` (w, h) the model input shows."""
        w, h = size
        scale = 1.0 if self.resize is None else self.resize / min(w, h)
        side = self.crop / scale
        left, top = (w - side) / 2, (h - side) / 2
        return (round(left), round(top), round(left + side), round(top + side))

    def to_dict(self) -> dict[str, Any]:
        """A JSON-friendly form, stored in checkpoints."""
        d = asdict(self)
        d["mean"], d["std"] = list(self.mean), list(self.std)
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Preprocessing:
        """Inverse of :meth:`to_dict`."""
        return cls(
            resize=d.get("resize"),
            crop=int(d["crop"]),
            mean=tuple(float(v) for v in d["mean"]),
            std=tuple(float(v) for v in d["std"]),
            interpolation=str(d.get("interpolation", "bilinear")),
            channels=int(d.get("channels", 3)),
        )


def to_uint8(image: Image.Image) -> np.ndarray:
    """An RGB image as a ``(H, W, 3)`` uint8 array."""
    return np.asarray(image.convert("RGB"), dtype=np.uint8)
