"""Heat-map overlays."""

from __future__ import annotations

import numpy as np
from PIL import Image

from cnnlens.errors import InputError


def normalize_map(attribution: np.ndarray, *, signed: bool = False, percentile: float = 99.5) -> np.ndarray:
    """Scale a map for display: ``[0, 1]`` for unsigned maps, ``[-1, 1]`` (0 stays 0) for signed ones.

    The scale is a high percentile of the magnitude, so one extreme pixel does not wash out the rest.
    """
    a = np.nan_to_num(np.asarray(attribution, dtype=np.float64))
    if signed:
        scale = np.percentile(np.abs(a), percentile)
        return np.clip(a / scale, -1, 1) if scale > 0 else np.zeros_like(a)
    a = a - a.min()
    scale = np.percentile(a, percentile)
    return np.clip(a / scale, 0, 1) if scale > 0 else np.zeros_like(a)


def colorize(attribution: np.ndarray, *, signed: bool = False, cmap: str | None = None) -> np.ndarray:
    """A map as an ``(H, W, 3)`` uint8 colour image (``jet`` or, for signed maps, ``bwr``)."""
    from matplotlib import colormaps

    norm = normalize_map(attribution, signed=signed)
    values = (norm + 1) / 2 if signed else norm
    rgba = colormaps[cmap or ("bwr" if signed else "jet")](values)
    return (rgba[..., :3] * 255 + 0.5).astype(np.uint8)


def overlay(
    image: Image.Image,
    attribution: np.ndarray,
    *,
    signed: bool = False,
    alpha: float = 0.5,
    cmap: str | None = None,
) -> Image.Image:
    """Blend a colour-mapped attribution over an image; the map is resized to the image.

    Args:
        image: The picture to draw on.
        attribution: A 2-D map of any size.
        signed: Draw negative values in blue and positive in red around a white zero.
        alpha: Heat-map opacity in [0, 1].
        cmap: A matplotlib colour-map name.
    """
    if not 0 <= alpha <= 1:
        raise InputError(f"alpha must be in [0, 1], got {alpha}")
    a = np.asarray(attribution)
    if a.ndim != 2:
        raise InputError(f"attribution must be a 2-D map, got shape {a.shape}")
    heat = Image.fromarray(colorize(a, signed=signed, cmap=cmap)).resize(
        image.size, Image.Resampling.BILINEAR
    )
    return Image.blend(image.convert("RGB"), heat, alpha)
