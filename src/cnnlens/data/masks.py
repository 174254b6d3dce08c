"""Object masks: the hand-drawn polygons shipped for the sample photos, mask files, and mapping a mask
from the original photo into the model's input view.

The polygons in ``sample_masks.json`` were drawn by looking at each photo (rendered with grid lines) and
are stored in original image pixel coordinates ``(x, y)`` together with the image size ``(w, h)``.
"""

from __future__ import annotations

import json
import os
from functools import lru_cache
from importlib import resources
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageDraw

from cnnlens.data.transforms import Preprocessing
from cnnlens.errors import ImageLoadError, InputError, unknown


@lru_cache(maxsize=1)
def _sample_polygons() -> dict[str, Any]:
    text = resources.files("cnnlens.data").joinpath("sample_masks.json").read_text(encoding="utf-8")
    masks: dict[str, Any] = json.loads(text)["masks"]
    return masks


def sample_mask_names() -> list[str]:
    """The sample photos that have a shipped object polygon."""
    return list(_sample_polygons())


def polygon_mask(polygon: list[tuple[float, float]] | list[list[float]], size: tuple[int, int]) -> np.ndarray:
    """Rasterise a polygon into a boolean mask.

    Args:
        polygon: At least three ``(x, y)`` vertices in pixel coordinates.
        size: ``(width, height)`` of the mask.

    Returns:
        A ``(height, width)`` boolean array, True inside the polygon (edges included).
    """
    if len(polygon) < 3:
        raise InputError(f"a polygon needs at least 3 vertices, got {len(polygon)}")
    canvas = Image.new("L", (int(size[0]), int(size[1])), 0)
    ImageDraw.Draw(canvas).polygon([(float(x), float(y)) for x, y in polygon], fill=1, outline=1)
    return np.asarray(canvas, dtype=bool)


def sample_mask(name: str) -> np.ndarray:
    """The shipped object mask of a sample photo, at the photo's original size.

    Args:
        name: A sample name (``"chelsea"``, ``"coffee"``, ``"rocket"``, ``"motorcycle"``,
            ``"grace_hopper"``).

    Returns:
        A ``(height, width)`` boolean mask of the main object.

    Raises:
        UnknownNameError: No polygon ships for ``name``.
    """
    polygons = _sample_polygons()
    if name not in polygons:
        raise unknown("sample mask", name, list(polygons))
    entry = polygons[name]
    return polygon_mask(entry["polygon"], tuple(entry["size"]))


def load_mask(path: str | os.PathLike[str]) -> np.ndarray:
    """Read a mask image: any non-zero pixel (of any channel) is inside the object.

    Returns:
        A ``(height, width)`` boolean array.

    Raises:
        ImageLoadError: The file cannot be read.
    """
    from cnnlens.data.images import load_image

    p = Path(path)
    arr = np.asarray(load_image(p))
    mask = arr.max(axis=2) > 0
    if not mask.any():
        raise ImageLoadError(f"{p}: the mask is empty (every pixel is zero); expected the object as non-zero")
    return mask


def mask_to_input(mask: np.ndarray, preprocessing: Preprocessing) -> np.ndarray:
    """Map a mask drawn on the original photo into the model's input view.

    The part of the photo the model sees is :meth:`Preprocessing.crop_box`; it is cut out and resized
    (nearest neighbour) to the input size.

    Args:
        mask: ``(height, width)`` boolean mask at the original size.
        preprocessing: The model's preprocessing.

    Returns:
        A ``(crop, crop)`` boolean mask aligned with the model input.
    """
    if not isinstance(mask, np.ndarray) or mask.ndim != 2:
        raise InputError(f"mask must be a 2-D array, got {getattr(mask, 'shape', type(mask).__name__)}")
    height, width = mask.shape
    box = preprocessing.crop_box((width, height))
    image = Image.fromarray(mask.astype(np.uint8) * 255).crop(box)
    size = preprocessing.input_size
    resized = image.resize((size[1], size[0]), Image.Resampling.NEAREST)
    return np.asarray(resized) > 127
