"""Concept masks for network dissection: read a user's concept folders, or draw a concept set.

A *concept* is anything that can be marked pixel by pixel in an image (an object, a colour, a
texture). Dissection (:mod:`cnnlens.probing.dissection`) needs, for each image of a dataset, the mask
of every concept present in it. Three sources:

* a folder with one subfolder per concept, ``MASKS/<concept>/<image-stem>.png``: a pixel belongs to
  the concept when its mask pixel is non-zero; an image with no file for a concept does not show it
  (its mask is empty);
* the mask column of a manifest (or a mask folder): each image's mask marks the concept named by
  its class (:func:`label_concepts`);
* :func:`generate_concepts` (``cnnlens data concepts``): synthetic images of shapes in colours on
  textured regions, with the exact mask of every shape, colour and texture, so dissection runs
  offline.
"""

from __future__ import annotations

import csv
import json
import os
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from cnnlens.data.dataset import eval_mask_transform
from cnnlens.data.folders import ImageSet, Sample, mask_files
from cnnlens.data.split import DEFAULT_FRACTIONS, stratified_split
from cnnlens.data.synthetic import SHAPES
from cnnlens.data.transforms import Preprocessing
from cnnlens.errors import InputError


@dataclass(frozen=True)
class ConceptSet:
    """The concept masks of a list of samples.

    Attributes:
        names: The concepts, in column order.
        files: Per sample, ``{concept index: mask file}`` for the concepts present in it.
        kinds: Optional kind of each concept (``"shape"``, ``"colour"``, ...), for reports.
    """

    names: list[str]
    files: list[dict[int, Path]]
    kinds: dict[str, str] | None = None

    def counts(self) -> list[int]:
        """How many images show each concept."""
        c = Counter(k for f in self.files for k in f)
        return [c.get(k, 0) for k in range(len(self.names))]


def read_concepts(folder: str | os.PathLike[str], samples: Sequence[Sample]) -> ConceptSet:
    """The masks of ``folder/<concept>/<image-stem>.*`` for ``samples`` (matched by file-name stem).

    Raises:
        InputError: ``folder`` is missing, has no concept subfolder with a mask of one of the images,
            or two of the images share a stem (a mask could not say which it belongs to).
    """
    root = Path(folder)
    if not root.is_dir():
        raise InputError(f"--concepts {root}: no such folder; expected MASKS/<concept>/<image-stem>.png")
    stems = Counter(s.path.stem for s in samples)
    clashes = [s for s, n in stems.items() if n > 1]
    if clashes:
        raise InputError(
            f"several images are called {clashes[0]!r}, so concept masks (matched by name) cannot say "
            "which one they belong to; rename them"
        )
    index = {s.path.stem: i for i, s in enumerate(samples)}
    names: list[str] = []
    files: list[dict[int, Path]] = [{} for _ in samples]
    for sub in sorted(p for p in root.iterdir() if p.is_dir()):
        found = {stem: path for stem, path in mask_files(sub).items() if stem in index}
        if not found:
            continue
        k = len(names)
        names.append(sub.name)
        for stem, path in found.items():
            files[index[stem]][k] = path
    if not names:
        raise InputError(
            f"--concepts {root}: no concept subfolder holds a mask named like one of the {len(samples)} "
            "images (expected MASKS/<concept>/<image-stem>.png)"
        )
    kinds_file = root.parent / "concepts.json"
    kinds = None
    if kinds_file.is_file():
        try:
            kinds = dict(json.loads(kinds_file.read_text()).get("kinds", {})) or None
        except (OSError, ValueError, AttributeError):
            kinds = None
    return ConceptSet(names, files, kinds)


def label_concepts(dataset: ImageSet) -> ConceptSet:
    """Concepts from a dataset's own masks: an image's mask marks the concept named by its class.

    Raises:
        InputError: No image has a mask, or the images are unlabelled.
    """
    if not dataset.class_names or not any(s.mask is not None for s in dataset.samples):
        raise InputError(
            "no concepts: give --concepts MASKS (MASKS/<concept>/<image-stem>.png), or DATA with masks "
            "(a manifest with a mask column, or --masks) whose class names the concept"
        )
    files = [{s.label: s.mask} if s.mask is not None and s.label >= 0 else {} for s in dataset.samples]
    return ConceptSet(list(dataset.class_names), files)


class ConceptMasks:
    """Loads the concept masks of samples at the model's input geometry (its resize and crop).

    Args:
        concepts: The concept set.
        samples: The samples it was made for (the image sizes are checked against the masks).
        preprocessing: The model's preprocessing.
    """

    def __init__(self, concepts: ConceptSet, samples: Sequence[Sample], preprocessing: Preprocessing) -> None:
        self.concepts = concepts
        self.samples = samples
        self.size = preprocessing.input_size
        self.transform = eval_mask_transform(preprocessing)

    def __call__(self, indices: Sequence[int]) -> torch.Tensor:
        """``(N, K, H, W)`` bool masks of the samples at ``indices``, one channel per concept.

        Raises:
            InputError: A mask cannot be read, or its size differs from its image's.
        """
        out = torch.zeros(len(indices), len(self.concepts.names), *self.size, dtype=torch.bool)
        for row, i in enumerate(indices):
            files = self.concepts.files[i]
            if not files:
                continue
            image = self.samples[i].path
            try:
                with Image.open(image) as im:
                    size = im.size
            except OSError as err:
                raise InputError(f"image {image} cannot be read: {err}") from None
            for k, path in files.items():
                out[row, k] = self._load(path, image, size)[0] > 0
        return out

    def _load(self, path: Path, image: Path, size: tuple[int, int]) -> torch.Tensor:
        try:
            with Image.open(path) as m:
                if m.size != size:
                    raise InputError(
                        f"concept mask {path} is {m.size[0]}x{m.size[1]} but its image {image} is "
                        f"{size[0]}x{size[1]}; a mask must have its image's size"
                    )
                return self.transform(m.convert("L"))
        except OSError as err:
            raise InputError(f"concept mask {path} (of image {image}) cannot be read: {err}") from None


# ---------------------------------------------------------------------------------------------
# The built-in concept set

#: Colours (RGB in [0, 1]) of the colour concepts.
COLOURS: dict[str, tuple[float, float, float]] = {
    "red": (0.9, 0.1, 0.1),
    "green": (0.1, 0.75, 0.1),
    "blue": (0.1, 0.2, 0.95),
    "yellow": (0.95, 0.9, 0.1),
}
CONCEPT_SHAPES = ("circle", "triangle", "cross", "square")


def _stripes(rows: np.ndarray, cols: np.ndarray, period: int, angle: float) -> np.ndarray:
    t = rows * np.sin(angle) + cols * np.cos(angle)
    return (np.floor(t / (period / 2)) % 2).astype(bool)


def _checker(rows: np.ndarray, cols: np.ndarray, period: int, angle: float) -> np.ndarray:
    return ((rows // (period // 2 or 1)) + (cols // (period // 2 or 1))) % 2 == 1


def _dots(rows: np.ndarray, cols: np.ndarray, period: int, angle: float) -> np.ndarray:
    r = (rows % period) - period / 2 + 0.5
    c = (cols % period) - period / 2 + 0.5
    return r**2 + c**2 <= (period / 3.2) ** 2


TEXTURES: dict[str, Callable[[np.ndarray, np.ndarray, int, float], np.ndarray]] = {
    "stripes": _stripes,
    "checker": _checker,
    "dots": _dots,
}


@dataclass(frozen=True)
class ConceptConfig:
    """The settings of :func:`generate_concepts` (saved as ``concepts.json``)."""

    per_class: int = 50
    size: int = 64
    seed: int = 0

    def __post_init__(self) -> None:
        if self.per_class < 3:
            raise InputError(f"--per-class must be at least 3 (one image per split), got {self.per_class}")
        if self.size < 16:
            raise InputError(f"--size must be at least 16 pixels, got {self.size}")


def concept_kinds() -> dict[str, str]:
    """Every built-in concept and its kind."""
    kinds = {s: "shape" for s in CONCEPT_SHAPES}
    kinds |= {c: "colour" for c in COLOURS}
    return kinds | {t: "texture" for t in TEXTURES}


def render_concepts(
    size: int, shape: str, rng: np.random.Generator
) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """One image (``(size, size, 3)`` uint8) with one ``shape`` object in a random colour on a grey
    background, usually with a textured rectangle, and the exact boolean mask of each concept shown."""
    rows, cols = np.mgrid[0:size, 0:size]
    grey = 0.45 + 0.1 * rng.random()
    img = np.full((size, size, 3), grey) + rng.normal(0, 0.02, (size, size, 3))
    masks: dict[str, np.ndarray] = {}
    if rng.random() < 0.8:
        texture = str(rng.choice(list(TEXTURES)))
        h, w = rng.integers(size // 2, size + 1, 2)
        top, left = rng.integers(0, size - h + 1), rng.integers(0, size - w + 1)
        region = (rows >= top) & (rows < top + h) & (cols >= left) & (cols < left + w)
        period = int(rng.integers(max(4, size // 10), max(6, size // 6) + 1))
        on = TEXTURES[texture](rows, cols, period, float(rng.uniform(0, np.pi)))
        dark, light = 0.1 + 0.1 * rng.random(), 0.85 + 0.1 * rng.random()
        img[region] = np.where(on[region][:, None], light, dark)
        masks[texture] = region
    r = rng.uniform(0.18, 0.28) * size
    centre = (rng.uniform(r, size - r), rng.uniform(r, size - r))
    obj = SHAPES[shape](size, r, centre, rng.uniform(0, 2 * np.pi))
    colour = str(rng.choice(list(COLOURS)))
    img[obj] = np.asarray(COLOURS[colour]) * (0.9 + 0.1 * rng.random())
    for name in list(masks):
        masks[name] = masks[name] & ~obj
    masks[shape] = obj
    masks[colour] = obj
    return (np.clip(img, 0, 1) * 255 + 0.5).astype(np.uint8), {k: v for k, v in masks.items() if v.any()}


def generate_concepts(out: str | os.PathLike[str], cfg: ConceptConfig) -> Path:
    """Write the built-in concept set under ``out``; return the manifest's path.

    Layout: ``DIR/images/<shape>/<stem>.png`` (class folders: the object's shape),
    ``DIR/concepts/<concept>/<stem>.png`` (only for the concepts an image shows), ``DIR/masks/`` (the
    object's mask), ``DIR/manifest.csv`` (path,label,mask,split) and ``DIR/concepts.json``.

    Raises:
        InputError: ``out`` exists and is not empty.
    """
    root = Path(out)
    if root.exists() and any(root.iterdir()):
        raise InputError(f"{root} exists and is not empty; choose a new folder")
    labels = [k for k in range(len(CONCEPT_SHAPES)) for _ in range(cfg.per_class)]
    split_of = {i: s for s, idx in stratified_split(labels, DEFAULT_FRACTIONS, cfg.seed).items() for i in idx}
    rng = np.random.default_rng(cfg.seed)
    rows = []
    for sub in ("masks", *(f"concepts/{c}" for c in concept_kinds())):
        (root / sub).mkdir(parents=True)
    for i, label in enumerate(labels):
        shape = CONCEPT_SHAPES[label]
        image, masks = render_concepts(cfg.size, shape, rng)
        stem = f"{shape}_{i:05d}"
        path = root / "images" / shape / f"{stem}.png"
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(image).save(path)
        for concept, mask in masks.items():
            Image.fromarray(mask.astype(np.uint8) * 255).save(root / "concepts" / concept / f"{stem}.png")
        Image.fromarray(masks[shape].astype(np.uint8) * 255).save(root / "masks" / f"{stem}.png")
        rows.append([path.relative_to(root).as_posix(), shape, f"masks/{stem}.png", split_of[i]])
    manifest = root / "manifest.csv"
    with manifest.open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["path", "label", "mask", "split"])
        writer.writerows(rows)
    settings = {**asdict(cfg), "class_names": list(CONCEPT_SHAPES), "kinds": concept_kinds()}
    (root / "concepts.json").write_text(json.dumps(settings, indent=1))
    return manifest
