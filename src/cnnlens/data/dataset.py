"""A PyTorch dataset over :class:`~cnnlens.data.folders.Sample` lists, with joint image/mask transforms.

Evaluation uses exactly the model's :class:`~cnnlens.data.transforms.Preprocessing` (what every
other cnnlens command feeds the model). Training adds augmentation suited to small datasets
(torchvision transforms v2): a random resized crop of 70-100% of the image, a horizontal flip
(``augment="standard"``; ``"noflip"`` leaves it out, for digits and text), a small rotation and a
colour jitter. Geometric steps move the mask with the image.

Items are dictionaries, so that training objectives can read what they need: ``image``
``(C, H, W)``, ``label``, ``index`` and, when masks are requested, ``mask`` ``(1, H, W)`` in
{0, 1} and ``has_mask`` (``False`` items carry an all-zero mask).
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset
from torchvision import tv_tensors
from torchvision.transforms import InterpolationMode, v2

from cnnlens.data.folders import Sample
from cnnlens.data.images import load_image
from cnnlens.data.transforms import Preprocessing
from cnnlens.errors import InputError

AUGMENTATIONS = ("standard", "noflip", "none")

Item = dict[str, torch.Tensor]
JointTransform = Callable[[Image.Image, Image.Image | None], tuple[torch.Tensor, torch.Tensor | None]]


def _geometry(pre: Preprocessing, augment: str) -> list[v2.Transform]:
    mode = InterpolationMode(pre.interpolation)
    if augment == "none":
        steps: list[v2.Transform] = [] if pre.resize is None else [v2.Resize(pre.resize, interpolation=mode)]
        return [*steps, v2.CenterCrop(pre.crop)]
    steps = [
        v2.RandomResizedCrop(pre.crop, scale=(0.7, 1.0), ratio=(0.85, 1.18), interpolation=mode),
        v2.RandomRotation(10, interpolation=InterpolationMode.BILINEAR),
    ]
    if augment == "standard":
        steps.insert(1, v2.RandomHorizontalFlip())
    return steps


def train_transform(pre: Preprocessing, augment: str = "standard") -> JointTransform:
    """Augment, then scale and normalise like ``pre``; masks follow every geometric step.

    Raises:
        ValueError: Unknown ``augment``.
    """
    if augment not in AUGMENTATIONS:
        raise InputError(f"unknown augmentation {augment!r}; expected one of {', '.join(AUGMENTATIONS)}")
    colour = [] if augment == "none" else [v2.ColorJitter(0.2, 0.2, 0.2)]
    gray = [v2.Grayscale()] if pre.channels == 1 else []
    pipeline = v2.Compose(
        [
            v2.ToImage(),
            *_geometry(pre, augment),
            *colour,
            *gray,
            v2.ToDtype(torch.float32, scale=True),
            v2.Normalize(list(pre.mean), list(pre.std)),
        ]
    )

    def apply(image: Image.Image, mask: Image.Image | None) -> tuple[torch.Tensor, torch.Tensor | None]:
        if mask is None:
            return pipeline(image), None
        x, m = pipeline(image, tv_tensors.Mask(_mask_array(mask)))
        return x, m.float()

    return apply


def eval_transform(pre: Preprocessing) -> JointTransform:
    """The model's own preprocessing for the image; the same resize and crop (nearest) for the mask."""
    geometry = v2.Compose(_geometry(pre, "none"))

    def apply(image: Image.Image, mask: Image.Image | None) -> tuple[torch.Tensor, torch.Tensor | None]:
        m = None if mask is None else geometry(tv_tensors.Mask(_mask_array(mask))).float()
        return pre(image), m

    return apply


def eval_mask_transform(pre: Preprocessing) -> Callable[[Image.Image], torch.Tensor]:
    """The model's resize and crop (nearest) for a mask alone: a ``(1, H, W)`` float tensor in {0, 1}."""
    geometry = v2.Compose(_geometry(pre, "none"))
    return lambda mask: geometry(tv_tensors.Mask(_mask_array(mask))).float()


def _mask_array(mask: Image.Image) -> torch.Tensor:
    """A mask image as a ``(1, H, W)`` uint8 tensor in {0, 1} (any non-zero pixel is foreground)."""
    arr = np.asarray(mask.convert("L")) > 0
    return torch.from_numpy(arr.astype(np.uint8))[None]


class ImageDataset(Dataset[Item]):
    """Images (and optionally masks) of a list of samples, transformed for the model.

    Args:
        samples: The samples, e.g. one split of :func:`~cnnlens.data.split.split_dataset`.
        transform: :func:`train_transform` or :func:`eval_transform`.
        masks: Also return ``mask`` and ``has_mask``.
        cache: Keep decoded images in memory (small datasets: decode once, not once per epoch).
    """

    def __init__(
        self, samples: list[Sample], transform: JointTransform, *, masks: bool = False, cache: bool = True
    ) -> None:
        self.samples = list(samples)
        self.transform = transform
        self.masks = masks
        self.cache = cache
        self._images: dict[int, tuple[Image.Image, Image.Image | None]] = {}

    def __len__(self) -> int:
        return len(self.samples)

    def raw(self, index: int) -> tuple[Image.Image, Image.Image | None]:
        """The decoded image and mask (``None`` without one) of sample ``index``."""
        if index in self._images:
            return self._images[index]
        s = self.samples[index]
        mask = None
        if self.masks and s.mask is not None:
            with Image.open(s.mask) as m:
                mask = m.convert("L")
        pair = (load_image(s.path), mask)
        if self.cache:
            self._images[index] = pair
        return pair

    def __getitem__(self, index: int) -> Item:
        image, mask = self.raw(index)
        x, m = self.transform(image, mask)
        item = {"image": x, "label": torch.tensor(self.samples[index].label), "index": torch.tensor(index)}
        if self.masks:
            item["has_mask"] = torch.tensor(m is not None)
            item["mask"] = m if m is not None else torch.zeros(1, *x.shape[-2:])
        return item
