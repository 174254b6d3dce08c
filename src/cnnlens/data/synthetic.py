"""A synthetic shape dataset with exact masks and an optional spurious background cue.

Each image shows one object of its class (circle, triangle, cross, square, star, ring, crescent,
hexagon: the first ``K`` are used, the most distinct first) at a random position, size, rotation
and colour, on a textured background (smooth noise in a tint) cluttered with random lines and dots.
The object's exact segmentation mask is saved beside the image.

The background tint is a *cue*: each class owns one tint. Without ``spurious`` the cue is drawn
independently of the class everywhere. With ``spurious=P`` the cue agrees with the class in a
fraction ``P`` of the **training** images (the other training images get another class's tint) and
stays independent in the validation and test images, like the wolf-and-snow shortcut of Ribeiro et
al. (2016): a model that learns the tint does well in training and badly on test, and explanation
tools should show it looking at the background.

Layout (so both the manifest and the class-folder readers work)::

    DIR/manifest.csv                  path,label,mask,split,cue (the split is fixed here)
    DIR/images/<class>/<name>.png
    DIR/masks/<name>.png              0 = background, 255 = object
    DIR/synth.json                    the generator's settings

Train on ``DIR/manifest.csv`` to keep the split (needed for ``--spurious``); ``DIR/images`` with
``--masks DIR/masks`` draws a new split and so mixes cued and uncued images.

References:
    Ribeiro, Singh, Guestrin. "Why should I trust you?": Explaining the predictions of any
    classifier. KDD 2016.
"""

from __future__ import annotations

import csv
import io
import os
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
from PIL import Image
from skimage.draw import disk, line_aa, polygon

from cnnlens.data.split import DEFAULT_FRACTIONS, stratified_split
from cnnlens.errors import InputError
from cnnlens.outputs import write_json, write_text, write_with


def _polygon_mask(size: int, radii: np.ndarray, centre: tuple[float, float], angle: float) -> np.ndarray:
    theta = angle + np.linspace(0, 2 * np.pi, len(radii), endpoint=False)
    rows = centre[0] + radii * np.sin(theta)
    cols = centre[1] + radii * np.cos(theta)
    mask = np.zeros((size, size), dtype=bool)
    rr, cc = polygon(rows, cols, shape=mask.shape)
    mask[rr, cc] = True
    return mask


def _regular(vertices: int) -> Callable[[int, float, tuple[float, float], float], np.ndarray]:
    return lambda size, r, c, a: _polygon_mask(size, np.full(vertices, r), c, a)


def _star(size: int, r: float, c: tuple[float, float], a: float) -> np.ndarray:
    return _polygon_mask(size, np.tile([r, 0.45 * r], 5), c, a)


def _cross(size: int, r: float, c: tuple[float, float], a: float) -> np.ndarray:
    # the 12 corners of a plus sign whose arms are 2r/3 wide, rotated by a
    w = r / 3
    pts = np.array(
        [
            [w, r],
            [-w, r],
            [-w, w],
            [-r, w],
            [-r, -w],
            [-w, -w],
            [-w, -r],
            [w, -r],
            [w, -w],
            [r, -w],
            [r, w],
            [w, w],
        ]
    )
    rot = np.array([[np.cos(a), -np.sin(a)], [np.sin(a), np.cos(a)]])
    xy = pts @ rot.T
    mask = np.zeros((size, size), dtype=bool)
    rr, cc = polygon(c[0] + xy[:, 1], c[1] + xy[:, 0], shape=mask.shape)
    mask[rr, cc] = True
    return mask


def _disk(size: int, r: float, c: tuple[float, float]) -> np.ndarray:
    mask = np.zeros((size, size), dtype=bool)
    rr, cc = disk(c, r, shape=mask.shape)
    mask[rr, cc] = True
    return mask


def _crescent(size: int, r: float, c: tuple[float, float], a: float) -> np.ndarray:
    shift = (c[0] + 0.5 * r * np.sin(a), c[1] + 0.5 * r * np.cos(a))
    return _disk(size, r, c) & ~_disk(size, 0.85 * r, shift)


def _ring(size: int, r: float, c: tuple[float, float], a: float) -> np.ndarray:
    return _disk(size, r, c) & ~_disk(size, 0.55 * r, c)


SHAPES: dict[str, Callable[[int, float, tuple[float, float], float], np.ndarray]] = {
    "circle": lambda size, r, c, a: _disk(size, r, c),
    "triangle": _regular(3),
    "cross": _cross,
    "square": _regular(4),
    "star": _star,
    "ring": _ring,
    "crescent": _crescent,
    "hexagon": _regular(6),
}

#: One background tint per class (RGB in [0, 1]), the spurious cue.
CUE_TINTS = np.array(
    [
        [0.85, 0.35, 0.30],
        [0.30, 0.55, 0.85],
        [0.35, 0.75, 0.35],
        [0.85, 0.75, 0.30],
        [0.65, 0.40, 0.80],
        [0.30, 0.75, 0.75],
        [0.85, 0.55, 0.20],
        [0.55, 0.55, 0.55],
    ]
)


@dataclass(frozen=True)
class SynthConfig:
    """The settings of :func:`generate` (saved as ``synth.json``)."""

    classes: int = 3
    per_class: int = 100
    size: int = 64
    spurious: float | None = None
    seed: int = 0
    clutter: float = 1.0

    def __post_init__(self) -> None:
        if not 2 <= self.classes <= len(SHAPES):
            raise InputError(
                f"--classes must be between 2 and {len(SHAPES)} (the shapes: {', '.join(SHAPES)}), "
                f"got {self.classes}"
            )
        if self.per_class < 3:
            raise InputError(f"--per-class must be at least 3 (one image per split), got {self.per_class}")
        if self.size < 16:
            raise InputError(f"--size must be at least 16 pixels, got {self.size}")
        if self.clutter < 0:
            raise InputError(f"--clutter must be non-negative, got {self.clutter}")
        if self.spurious is not None and not 0.0 <= self.spurious <= 1.0:
            raise InputError(f"--spurious is a fraction between 0 and 1, got {self.spurious}")


def background(size: int, tint: np.ndarray, rng: np.random.Generator, clutter: float = 1.0) -> np.ndarray:
    """A ``(size, size, 3)`` float image: smooth noise in ``tint`` plus random lines and dots.

    ``clutter`` scales the number of lines (``size / 12``) and dots (``size / 6``); 0 leaves them out.
    """
    coarse = rng.random((max(2, size // 8), max(2, size // 8)))
    smooth = np.asarray(
        Image.fromarray((coarse * 255).astype(np.uint8)).resize((size, size), Image.Resampling.BICUBIC)
    )
    img = tint[None, None, :] * (0.6 + 0.4 * smooth[..., None] / 255.0)
    img = img + rng.normal(0, 0.04, img.shape)
    for _ in range(round(clutter * size / 12)):
        r0, c0, r1, c1 = rng.integers(0, size, 4)
        rr, cc, val = line_aa(r0, c0, r1, c1)
        img[rr, cc] = (1 - val[:, None]) * img[rr, cc] + val[:, None] * rng.random(3)
    for _ in range(round(clutter * size / 6)):
        rr, cc = disk(tuple(rng.integers(0, size, 2)), rng.uniform(0.5, size / 24 + 1), shape=(size, size))
        img[rr, cc] = rng.random(3)
    return np.clip(img, 0, 1)


def render(
    shape: str, tint: np.ndarray, size: int, rng: np.random.Generator, clutter: float = 1.0
) -> tuple[np.ndarray, np.ndarray]:
    """One image (``(size, size, 3)`` uint8) with a ``shape`` object and its exact boolean mask."""
    r = rng.uniform(0.2, 0.32) * size
    centre = (rng.uniform(r, size - r), rng.uniform(r, size - r))
    mask = SHAPES[shape](size, r, centre, rng.uniform(0, 2 * np.pi))
    img = background(size, tint, rng, clutter)
    colour = rng.random(3)
    colour[rng.integers(3)] = rng.choice([0.05, 0.95])  # saturated, so the object stands out
    shade = 0.85 + 0.15 * rng.random((size, size, 1))
    img = np.where(mask[..., None], colour[None, None, :] * shade, img)
    return (img * 255 + 0.5).astype(np.uint8), mask


def _cue(label: int, split: str, cfg: SynthConfig, rng: np.random.Generator) -> int:
    others = [k for k in range(cfg.classes) if k != label]
    if cfg.spurious is None or split != "train":
        return int(rng.integers(cfg.classes))
    return label if rng.random() < cfg.spurious else int(rng.choice(others))


def generate(out: str | os.PathLike[str], cfg: SynthConfig) -> Path:
    """Write the dataset described by ``cfg`` under ``out``; return the manifest's path.

    Raises:
        ValueError: ``out`` exists and is not empty.
    """
    root = Path(out)
    if root.exists() and any(root.iterdir()):
        raise InputError(f"{root} exists and is not empty; choose a new folder")
    names = list(SHAPES)[: cfg.classes]
    labels = [k for k in range(cfg.classes) for _ in range(cfg.per_class)]
    split_of = {i: s for s, idx in stratified_split(labels, DEFAULT_FRACTIONS, cfg.seed).items() for i in idx}
    rng = np.random.default_rng(cfg.seed)
    rows = []
    (root / "masks").mkdir(parents=True)
    for i, label in enumerate(labels):
        cue = _cue(label, split_of[i], cfg, rng)
        image, mask = render(names[label], CUE_TINTS[cue], cfg.size, rng, cfg.clutter)
        stem = f"{names[label]}_{i:05d}"
        path = root / "images" / names[label] / f"{stem}.png"
        write_png(path, Image.fromarray(image))
        write_png(root / "masks" / f"{stem}.png", Image.fromarray(mask.astype(np.uint8) * 255))
        rows.append(
            [path.relative_to(root).as_posix(), names[label], f"masks/{stem}.png", split_of[i], names[cue]]
        )
    text = io.StringIO(newline="")
    writer = csv.writer(text)
    writer.writerow(["path", "label", "mask", "split", "cue"])
    writer.writerows(rows)
    manifest = write_text(root / "manifest.csv", text.getvalue())
    write_json(root / "synth.json", {**asdict(cfg), "class_names": names})
    return manifest


def write_png(path: Path, image: Image.Image) -> Path:
    """Write ``image`` as a PNG file atomically (see :mod:`cnnlens.outputs`)."""
    return write_with(path, lambda f: image.save(f, format="PNG"))
