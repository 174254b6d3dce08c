"""Tests of the explorer (``cnnlens serve``)."""

from __future__ import annotations

import io
import time
from typing import TYPE_CHECKING, Any

from PIL import Image

if TYPE_CHECKING:
    from fastapi.testclient import TestClient


def png(image: Image.Image) -> bytes:
    """The image as PNG file bytes, as a browser would upload it."""
    buf = io.BytesIO()
    image.save(buf, format="PNG")
    return buf.getvalue()


def wait(client: TestClient, job: dict[str, Any], timeout: float = 30.0) -> dict[str, Any]:
    """The job's state once it has finished (or after ``timeout`` seconds)."""
    end = time.monotonic() + timeout
    while job["status"] in ("queued", "running") and time.monotonic() < end:
        time.sleep(0.02)
        job = client.get(f"/api/jobs/{job['id']}").json()
    return job
