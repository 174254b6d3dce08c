"""Reading image files into RGB :class:`PIL.Image.Image` objects, safely.

Handles EXIF orientation, grayscale, palette, alpha, CMYK and 16-bit/float images, and turns every way a
file can be wrong (missing, a directory, not an image, truncated, a decompression bomb) into one
:class:`~cnnlens.errors.ImageLoadError` whose message names the file.
"""

from __future__ import annotations

import errno
import os
import re
import threading
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps

from cnnlens.errors import ImageLoadError
from cnnlens.validation import check_positive_int

#: Largest image (width x height) cnnlens decodes; larger files are refused as possible bombs.
MAX_PIXELS = 100_000_000

_PIXEL_LIMIT_LOCK = threading.Lock()


def load_image(path: str | os.PathLike[str], *, max_pixels: int = MAX_PIXELS) -> Image.Image:
    """Read an image file as an 8-bit RGB image, upright according to its EXIF orientation.

    Args:
        path: A JPEG, PNG, BMP, TIFF, WebP (or any other format Pillow reads) file.
        max_pixels: Refuse images with more pixels than this (decompression bombs). Pillow's own
            limit (``PIL.Image.MAX_IMAGE_PIXELS``) is set to this value for the duration of the call
            and restored afterwards, so the limit can be raised as well as lowered.

    Returns:
        The decoded image in mode ``"RGB"``; transparent areas are composited on white.

    Raises:
        ImageLoadError: The file is missing, a directory, not an image, truncated or too large.
        ValueError: ``max_pixels`` is not a positive integer.
    """
    check_positive_int("max_pixels", max_pixels)
    p = Path(path)
    if not p.exists():
        raise ImageLoadError(f"{p}: {_why_missing(p)}")
    if p.is_dir():
        raise ImageLoadError(f"{p}: is a directory, expected an image file")

    def too_large(pixels: str) -> str:
        return (
            f"{p}: {pixels} pixels, over the limit of {max_pixels:,} (a possible decompression "
            "bomb); raise max_pixels (--max-pixels) if the file is trusted"
        )

    try:
        with _pillow_pixel_limit(max_pixels), warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(p) as im:
                width, height = im.size
                if width * height > max_pixels:
                    raise ImageLoadError(too_large(f"{width}x{height} = {width * height:,}"))
                im.load()
                upright = ImageOps.exif_transpose(im)
                return to_rgb(upright if upright is not None else im)
    except ImageLoadError:
        raise
    except Image.UnidentifiedImageError:
        raise ImageLoadError(f"{p}: not an image file Pillow can read") from None
    except PermissionError:
        raise ImageLoadError(f"{p}: cannot be read (permission denied)") from None
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as err:
        # Pillow's text quotes its own limit (twice ours for an error): quote only ours
        size = re.search(r"\((\d+) pixels\)", str(err))
        raise ImageLoadError(too_large(f"{int(size.group(1)):,}" if size else "more")) from None
    except (OSError, SyntaxError, ValueError) as err:
        raise ImageLoadError(f"{p}: corrupt or truncated image ({err})") from None


def _why_missing(p: Path) -> str:
    """Why ``p`` does not exist: no such file, a dangling symbolic link or a symlink loop."""
    if not p.is_symlink():
        return "no such file"
    try:
        p.resolve(strict=True)
    except RuntimeError:  # Python 3.11-3.12 raise this for a loop
        return "a symlink loop (the link points back to itself); point it at an image file"
    except OSError as err:
        if err.errno == errno.ELOOP:
            return "a symlink loop (the link points back to itself); point it at an image file"
    return f"a symbolic link to a missing file ({os.readlink(p)})"


@contextmanager
def _pillow_pixel_limit(max_pixels: int) -> Iterator[None]:
    """Set Pillow's decompression-bomb limit to ``max_pixels`` inside the block, then restore it.

    Pillow checks its limit while opening and, for some formats (GIF frames, TIFF tiles, ICO),
    while decoding, warning above it and failing above twice it. Setting it to ``max_pixels`` makes
    every such check use cnnlens' limit. The limit is global, so the block holds a lock: threads
    loading images concurrently take turns instead of seeing each other's limits.
    """
    with _PIXEL_LIMIT_LOCK:
        previous = Image.MAX_IMAGE_PIXELS
        Image.MAX_IMAGE_PIXELS = max_pixels
        try:
            yield
        finally:
            Image.MAX_IMAGE_PIXELS = previous


def to_rgb(im: Image.Image) -> Image.Image:
    """Convert any Pillow mode to 8-bit RGB.

    16-bit and 32-bit integer images are scaled by their type's full range, float images by their
    own minimum and maximum; alpha (including palette transparency) is composited on white.
    """
    if im.mode == "RGB":
        return im
    if im.mode in ("I;16", "I;16B", "I;16L", "I;16N", "I", "F"):
        arr = np.asarray(im, dtype=np.float64)
        if im.mode == "F":
            lo, hi = float(np.nanmin(arr)), float(np.nanmax(arr))
            arr = (arr - lo) / (hi - lo) if hi > lo else np.zeros_like(arr)
        elif im.mode == "I" and arr.max() > 65535:
            arr = arr / float(2**32 - 1)
        else:
            arr = arr / 65535.0
        gray = np.clip(np.nan_to_num(arr) * 255.0 + 0.5, 0, 255).astype(np.uint8)
        return Image.fromarray(gray, mode="L").convert("RGB")
    if im.mode == "P" and "transparency" in im.info:
        im = im.convert("RGBA")
    if im.mode in ("RGBA", "LA", "PA", "RGBa", "La"):
        rgba = im.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    return im.convert("RGB")
