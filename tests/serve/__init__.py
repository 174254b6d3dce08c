"""Tests of the explorer (``cnnlens serve``)."""

from __future__ import annotations

import io

from PIL import Image


def png(image: Image.Image) -> bytes:
    """The image as PNG file bytes, as a browser would upload it."""
    buf = io.BytesIO()
    image.save(buf, format="PNG")
    return buf.getvalue()
