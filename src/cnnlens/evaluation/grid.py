"""The grid pointing game: 2x2 grids of images of different classes, one explained cell at a time.

Each grid holds four images that the model classifies confidently, each as a different class; the
map of one cell's class should put its positive mass in that cell. The cell masks are exact by
construction (the quadrants), every cell is equally far from the centre, so a map that ignores the
image or the class (a centred Gaussian, noise) scores at chance, 1/4, and a map that ignores the class
scores no better: the benchmark cannot be won by a centre prior.

Each cell shows its image as the model sees it alone (:meth:`Preprocessing.view`, the resized centre
crop), scaled to half the grid's side; the grid is then preprocessed like any image, so its outer
margin may be cropped, but the four quadrants of the model's input stay the four cells.

References:
    Böhle, Fritz, Schiele. Convolutional Dynamic Alignment Networks for Interpretable
    Classifications. CVPR 2021 (the grid pointing game).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from PIL import Image

from cnnlens.data.transforms import Preprocessing
from cnnlens.errors import InputError
from cnnlens.models.loaded import LoadedModel

#: Cells per grid (2x2).
CELLS = 4


@dataclass(frozen=True)
class GridSource:
    """An image usable as a grid cell: the model's top-1 class for it alone, with its probability."""

    stem: str
    image: Image.Image
    target: int
    class_name: str
    probability: float


@dataclass(frozen=True)
class GridCell:
    """One explained cell of a grid: the grid image, the cell's quadrant mask and its class.

    Attributes:
        stem: ``grid<g>-<cell>-<source stem>``.
        image: The grid (shared by its four cells).
        mask: ``(height, width)`` boolean mask of the cell, at the grid's size.
        target: The class of the cell's source image.
        source: The source image's stem.
    """

    stem: str
    image: Image.Image
    mask: np.ndarray
    target: int
    source: str


def grid_sources(
    images: Sequence[tuple[str, Image.Image]], model: LoadedModel, *, min_probability: float = 0.2
) -> list[GridSource]:
    """The images the model classifies with top-1 probability at least ``min_probability``, one per
    top-1 class (the most confident image of each class), in the order given."""
    if not 0.0 <= min_probability < 1.0:
        raise InputError(f"min_probability must be in [0, 1), got {min_probability!r}")
    best: dict[int, GridSource] = {}
    for start in range(0, len(images), 32):
        chunk = images[start : start + 32]
        tops = model.top_k(model.prepare([im for _, im in chunk]), 1)
        for (stem, image), [(target, name, p)] in zip(chunk, tops, strict=True):
            if p >= min_probability and (target not in best or p > best[target].probability):
                best[target] = GridSource(stem, image, target, name, p)
    order = {stem: i for i, (stem, _) in enumerate(images)}
    return sorted(best.values(), key=lambda s: order[s.stem])


def quadrant_masks(side: int) -> list[np.ndarray]:
    """The four ``(side, side)`` cell masks, row-major: top-left, top-right, bottom-left, bottom-right."""
    if side < 2 or side % 2:
        raise InputError(f"a grid's side must be an even number of pixels >= 2, got {side}")
    half = side // 2
    masks = []
    for row in range(2):
        for col in range(2):
            mask = np.zeros((side, side), dtype=bool)
            mask[row * half : (row + 1) * half, col * half : (col + 1) * half] = True
            masks.append(mask)
    return masks


def make_grid(images: Sequence[Image.Image], preprocessing: Preprocessing) -> Image.Image:
    """A ``2 crop x 2 crop`` grid of four images, each as the model sees it alone, row-major."""
    if len(images) != CELLS:
        raise InputError(f"a grid holds {CELLS} images, got {len(images)}")
    side = preprocessing.crop
    grid = Image.new("RGB", (2 * side, 2 * side))
    for i, image in enumerate(images):
        cell = preprocessing.view(image.convert("RGB")).resize((side, side), Image.Resampling.BILINEAR)
        grid.paste(cell, ((i % 2) * side, (i // 2) * side))
    return grid


def grid_cells(
    sources: Sequence[GridSource], preprocessing: Preprocessing, grids: int | None = None, *, seed: int = 0
) -> list[GridCell]:
    """Arrange ``sources`` into ``grids`` grids of four different classes, every cell explained.

    The sources are dealt in seeded random orders, one full order after another, so every source
    appears about equally often and no grid holds a class twice.

    Args:
        sources: At least four images of different top-1 classes (:func:`grid_sources`).
        preprocessing: The model's preprocessing (the cell size).
        grids: How many grids (default: ``ceil(len(sources) / 4)``, each source about once).
        seed: Seed of the arrangement.

    Returns:
        ``4 * grids`` cells, grid by grid.

    Raises:
        InputError: Fewer than four sources, or ``grids`` below 1.
    """
    if len({s.target for s in sources}) != len(sources):
        raise InputError("grid sources must have different classes (one image per class)")
    if len(sources) < CELLS:
        raise InputError(
            f"the grid pointing game needs at least {CELLS} images that the model classifies "
            f"confidently as {CELLS} different classes, got {len(sources)}"
        )
    count = math.ceil(len(sources) / CELLS) if grids is None else grids
    if count < 1:
        raise InputError(f"grids must be at least 1, got {grids}")
    rng = np.random.default_rng(seed)
    deck: list[int] = []
    cells: list[GridCell] = []
    masks = quadrant_masks(2 * preprocessing.crop)
    for g in range(count):
        chosen: list[int] = []
        while len(chosen) < CELLS:
            if not deck:
                deck = [int(i) for i in rng.permutation(len(sources))]
            pick = next((i for i in deck if i not in chosen), None)
            if pick is None:  # the rest of the deck is already in this grid: deal a new one
                deck = []
                continue
            deck.remove(pick)
            chosen.append(pick)
        grid = make_grid([sources[i].image for i in chosen], preprocessing)
        for cell, i in enumerate(chosen):
            s = sources[i]
            cells.append(GridCell(f"grid{g}-{cell}-{s.stem}", grid, masks[cell], s.target, s.stem))
    return cells
