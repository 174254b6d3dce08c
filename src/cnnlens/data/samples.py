"""Sample photographs that ship inside installed packages (no network needed).

scikit-image ships ``chelsea`` (a tabby cat), ``coffee``, ``rocket`` and ``stereo_motorcycle``;
matplotlib ships Grace Hopper's portrait; scikit-learn ships ``china`` and ``flower``.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
from PIL import Image

from cnnlens.errors import unknown


def _skimage(name: str) -> Callable[[], np.ndarray]:
    def load() -> np.ndarray:
        from skimage import data

        arr = getattr(data, name)()
        return np.asarray(arr[0] if isinstance(arr, tuple) else arr)

    return load


def _grace_hopper() -> np.ndarray:
    from matplotlib import cbook

    path = cbook.get_sample_data("grace_hopper.jpg", asfileobj=False)
    with Image.open(path) as im:
        return np.asarray(im.convert("RGB"))


def _sklearn(filename: str) -> Callable[[], np.ndarray]:
    def load() -> np.ndarray:
        from sklearn.datasets import load_sample_image

        return np.asarray(load_sample_image(filename))

    return load


_LOADERS: dict[str, Callable[[], np.ndarray]] = {
    "chelsea": _skimage("chelsea"),
    "coffee": _skimage("coffee"),
    "rocket": _skimage("rocket"),
    "motorcycle": _skimage("stereo_motorcycle"),
    "grace_hopper": _grace_hopper,
    "china": _sklearn("china.jpg"),
    "flower": _sklearn("flower.jpg"),
}

#: The photos the demo explains, in order.
SAMPLE_NAMES: tuple[str, ...] = ("chelsea", "coffee", "rocket", "motorcycle", "grace_hopper")


def load_sample(name: str) -> Image.Image:
    """Load one sample photo by name as an RGB image.

    Raises:
        UnknownNameError: ``name`` is not one of :func:`sample_images`'s names.
    """
    if name not in _LOADERS:
        raise unknown("sample image", name, list(_LOADERS))
    return Image.fromarray(_LOADERS[name]()).convert("RGB")


def sample_images(names: tuple[str, ...] | list[str] = SAMPLE_NAMES) -> dict[str, Image.Image]:
    """Load several sample photos, keyed by name."""
    return {n: load_sample(n) for n in names}


def available_samples() -> list[str]:
    """Every sample name :func:`load_sample` accepts."""
    return list(_LOADERS)
