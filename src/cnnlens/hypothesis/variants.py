"""Image variants for the hypothesis experiments: pure functions, ``(H, W, 3)`` uint8 arrays in and out.

Every function works on the image as the model sees it (resized and cropped, not normalised) and on
boolean masks of the same height and width; randomness comes only from the ``numpy`` generator
passed in, so a seed fixes every variant.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

import numpy as np
from PIL import Image, ImageFilter

from cnnlens.errors import InputError

Fill = Literal["mean", "blur", "noise", "black"]
FILLS: tuple[str, ...] = ("mean", "blur", "noise", "black")
TextureMode = Literal["image", "tile", "patches"]
TEXTURE_MODES: tuple[str, ...] = ("image", "tile", "patches")

#: The neutral grey of the backgrounds (the "object on a neutral background" variant).
NEUTRAL = 128


def check_image(image: np.ndarray) -> np.ndarray:
    """Raise :class:`InputError` unless ``image`` is an ``(H, W, 3)`` uint8 array."""
    if not isinstance(image, np.ndarray) or image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
        got = getattr(image, "shape", type(image).__name__)
        raise InputError(f"expected an (H, W, 3) uint8 image, got {got} {getattr(image, 'dtype', '')}")
    return image


def check_mask(mask: np.ndarray, shape: tuple[int, ...], what: str = "mask") -> np.ndarray:
    """Raise :class:`InputError` unless ``mask`` is a non-empty 2-D mask of ``shape[:2]``."""
    if not isinstance(mask, np.ndarray) or mask.shape != tuple(shape[:2]):
        got = getattr(mask, "shape", type(mask).__name__)
        raise InputError(
            f"{what} has shape {got}, the image {tuple(shape[:2])}; draw the mask on the same image"
        )
    mask = mask.astype(bool)
    if not mask.any():
        raise InputError(f"{what} is empty (no pixel inside); expected the object's pixels as non-zero")
    return mask


def check_object(mask: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
    """:func:`check_mask`, and the object must leave some background (else it has no silhouette)."""
    mask = check_mask(mask, shape)
    if mask.all():
        raise InputError(
            "the object mask covers the whole image the model sees, so it has no silhouette; "
            "show the model the whole photo (--view pad) or use a tighter mask"
        )
    return mask


# ----------------------------------------------------------------------------------------- parts


def grid_parts(shape: tuple[int, ...], n: int) -> list[np.ndarray]:
    """``n x n`` rectangular cells covering an image of ``shape`` (row-major), as boolean masks."""
    if not isinstance(n, (int, np.integer)) or n < 2:
        raise InputError(f"--grid must be at least 2 (cells per side), got {n}")
    h, w = shape[:2]
    if n > min(h, w):
        raise InputError(f"--grid {n}: more cells per side than pixels ({h}x{w})")
    rows = np.linspace(0, h, n + 1).round().astype(int)
    cols = np.linspace(0, w, n + 1).round().astype(int)
    parts = []
    for i in range(n):
        for j in range(n):
            m = np.zeros((h, w), dtype=bool)
            m[rows[i] : rows[i + 1], cols[j] : cols[j + 1]] = True
            parts.append(m)
    return parts


def box_parts(shape: tuple[int, ...], boxes: Sequence[tuple[int, int, int, int]]) -> list[np.ndarray]:
    """One part per box ``(left, top, right, bottom)`` in pixels of the image of ``shape``."""
    h, w = shape[:2]
    parts = []
    for box in boxes:
        left, top, right, bottom = (int(v) for v in box)
        if not (0 <= left < right <= w and 0 <= top < bottom <= h):
            raise InputError(
                f"box {left},{top},{right},{bottom} is not inside the {w}x{h} image "
                "(expected LEFT,TOP,RIGHT,BOTTOM with left < right and top < bottom)"
            )
        m = np.zeros((h, w), dtype=bool)
        m[top:bottom, left:right] = True
        parts.append(m)
    if not parts:
        raise InputError("--boxes needs at least one box LEFT,TOP,RIGHT,BOTTOM")
    return parts


def superpixel_parts(image: np.ndarray, n: int) -> list[np.ndarray]:
    """About ``n`` SLIC superpixels of ``image`` (skimage; deterministic: its centres start on a
    grid), as boolean masks."""
    from skimage.segmentation import slic

    if not isinstance(n, (int, np.integer)) or n < 2:
        raise InputError(f"--superpixels must be at least 2, got {n}")
    labels = slic(check_image(image), n_segments=int(n), compactness=10.0, start_label=0)
    return [labels == k for k in np.unique(labels)]


def label_parts(labels: np.ndarray) -> list[np.ndarray]:
    """One part per non-zero label of a label image; a binary mask gives its connected components."""
    from scipy import ndimage

    values = [v for v in np.unique(labels) if v != 0]
    if not values:
        raise InputError("the part mask is empty (every pixel is zero); expected the parts as non-zero")
    if len(values) == 1:
        comp, count = ndimage.label(labels != 0)
        return [comp == k for k in range(1, count + 1)]
    return [labels == v for v in values]


def within(parts: list[np.ndarray], mask: np.ndarray, min_pixels: int = 1) -> list[np.ndarray]:
    """Each part cut to the object ``mask``; parts with fewer than ``min_pixels`` left are dropped."""
    cut = [p & mask for p in parts]
    kept = [p for p in cut if p.sum() >= min_pixels]
    if not kept:
        raise InputError("no part overlaps the object mask; use a finer --grid or check the mask")
    return kept


# ---------------------------------------------------------------------------------------- fills


def fill_image(image: np.ndarray, fill: str, rng: np.random.Generator) -> np.ndarray:
    """The full-frame image a part is replaced with: the image's mean colour, a blurred copy, uniform
    noise or black."""
    check_image(image)
    if fill == "mean":
        return np.broadcast_to(image.reshape(-1, 3).mean(0).round().astype(np.uint8), image.shape).copy()
    if fill == "blur":
        radius = max(2.0, min(image.shape[:2]) / 16)
        return np.asarray(Image.fromarray(image).filter(ImageFilter.GaussianBlur(radius)))
    if fill == "noise":
        return rng.integers(0, 256, image.shape, dtype=np.uint8)
    if fill == "black":
        return np.zeros_like(image)
    raise InputError(f"unknown fill {fill!r}; choose one of {', '.join(FILLS)}")


def occlude(image: np.ndarray, part: np.ndarray, filler: np.ndarray) -> np.ndarray:
    """``image`` with the pixels of ``part`` taken from ``filler`` (all others untouched)."""
    return np.where(part[..., None], filler, image)


# -------------------------------------------------------------------------------------- shuffle


def tile_edges(length: int, n: int) -> np.ndarray:
    """Edges of ``n`` equal tiles along a side of ``length`` (the remainder stays outside the tiles)."""
    side = length // n
    return np.arange(n + 1) * side


def random_permutation(count: int, rng: np.random.Generator) -> np.ndarray:
    """A random permutation of ``range(count)`` other than the identity (``count >= 2``)."""
    while True:
        perm = rng.permutation(count)
        if not np.array_equal(perm, np.arange(count)):
            return perm


def jigsaw(
    image: np.ndarray, n: int, perm: np.ndarray, box: tuple[int, int, int, int] | None = None
) -> np.ndarray:
    """Cut ``image`` (or the region ``box`` = ``(top, left, bottom, right)``) into ``n x n`` equal
    tiles and lay them out again in the order ``perm``: tile ``k`` goes where tile ``perm[k]`` was.

    Rows and columns left over when the side is not a multiple of ``n`` stay where they are, so the
    output is a permutation of the input's pixels.
    """
    if not isinstance(n, (int, np.integer)) or n < 2:
        raise InputError(f"--grid sizes must be at least 2, got {n}")
    top, left, bottom, right = box if box is not None else (0, 0, image.shape[0], image.shape[1])
    region = image[top:bottom, left:right]
    if min(region.shape[:2]) < n:
        raise InputError(f"grid {n}: the region {region.shape[:2]} has fewer pixels per side than tiles")
    if sorted(int(p) for p in perm) != list(range(n * n)):
        raise InputError(f"perm must be a permutation of 0..{n * n - 1}")
    ys, xs = tile_edges(region.shape[0], n), tile_edges(region.shape[1], n)
    tiles = [region[ys[i] : ys[i + 1], xs[j] : xs[j + 1]] for i in range(n) for j in range(n)]
    out = image.copy()
    for k, src in enumerate(perm):
        i, j = divmod(k, n)
        out[top + ys[i] : top + ys[i + 1], left + xs[j] : left + xs[j + 1]] = tiles[int(src)]
    return out


def bounding_box(mask: np.ndarray) -> tuple[int, int, int, int]:
    """``(top, left, bottom, right)`` of the True pixels of ``mask`` (bottom and right exclusive)."""
    rows, cols = np.flatnonzero(mask.any(1)), np.flatnonzero(mask.any(0))
    if rows.size == 0:
        raise InputError("the mask is empty; it has no bounding box")
    return int(rows[0]), int(cols[0]), int(rows[-1]) + 1, int(cols[-1]) + 1


# ---------------------------------------------------------------------------------------- shape


def silhouette(mask: np.ndarray, fg: int = 0, bg: int = 255) -> np.ndarray:
    """The object's silhouette filled flat: ``fg`` inside the mask, ``bg`` outside."""
    return np.where(mask[..., None], np.uint8(fg), np.uint8(bg)).repeat(3, axis=2).astype(np.uint8)


def outline(mask: np.ndarray, width: int = 2, fg: int = 0, bg: int = 255) -> np.ndarray:
    """Only the object's outline (``width`` pixels inside its edge) in ``fg`` on ``bg``."""
    from scipy import ndimage

    inner = ndimage.binary_erosion(mask, iterations=max(1, int(width)), border_value=0)
    return silhouette(mask & ~inner, fg, bg)


def on_background(image: np.ndarray, mask: np.ndarray, value: int = NEUTRAL) -> np.ndarray:
    """The object's pixels kept, everything else a flat neutral grey."""
    return np.where(mask[..., None], image, np.uint8(value)).astype(np.uint8)


# -------------------------------------------------------------------------------------- texture


def texture_field(
    source: np.ndarray,
    shape: tuple[int, ...],
    mode: str,
    rng: np.random.Generator,
    patch: int | None = None,
) -> np.ndarray:
    """A full-frame texture of ``shape[:2]`` made from ``source`` (an ``(h, w, 3)`` uint8 image).

    Modes:
        ``image``: ``source`` resized to the frame (it is used as it is).
        ``tile``: its central square ``patch`` (default a third of the short side) repeated.
        ``patches``: synthesised from the source: a mosaic of randomly placed ``patch``-sized crops
            (rotated by multiples of 90 degrees), so no arrangement of the source survives.
    """
    check_image(source)
    h, w = shape[:2]
    if mode == "image":
        return np.asarray(Image.fromarray(source).resize((w, h), Image.Resampling.BILINEAR))
    side = int(patch) if patch is not None else max(4, min(source.shape[:2]) // 3)
    if not 2 <= side <= min(source.shape[:2]):
        raise InputError(f"texture patch {side} must be between 2 and the texture's short side")
    sh, sw = source.shape[:2]
    reps = (-(-h // side), -(-w // side))
    if mode == "tile":
        top, left = (sh - side) // 2, (sw - side) // 2
        tile = source[top : top + side, left : left + side]
        return np.tile(tile, (reps[0], reps[1], 1))[:h, :w].copy()
    if mode == "patches":
        rows = []
        for _ in range(reps[0]):
            row = []
            for _ in range(reps[1]):
                t, left = int(rng.integers(0, sh - side + 1)), int(rng.integers(0, sw - side + 1))
                row.append(np.rot90(source[t : t + side, left : left + side], int(rng.integers(4))))
            rows.append(np.concatenate(row, axis=1))
        return np.concatenate(rows, axis=0)[:h, :w].copy()
    raise InputError(f"unknown texture mode {mode!r}; choose one of {', '.join(TEXTURE_MODES)}")


def texture_swap(
    image: np.ndarray, mask: np.ndarray, texture: np.ndarray, background: int | None = None
) -> np.ndarray:
    """The object's mask filled with ``texture`` (a full-frame texture); outside the mask the image
    is kept, or a flat grey ``background`` when given (a cue-conflict image)."""
    base = image if background is None else np.full_like(image, np.uint8(background))
    return np.where(mask[..., None], texture, base).astype(np.uint8)
