"""Heat-map overlays, with the colour scale chosen by the values.

A map whose values are all of one sign is drawn on a *sequential* scale over their range (CAM's
2.8 to 19.1 spans the whole colour map, not the red half of a zero-centred one); a map with both
signs on a *diverging* scale centred at zero (white), so negative evidence is blue and positive red.
Maps compared side by side (one method on several images, two targets of one image) share one
:class:`ColorScale` made by :func:`choose_scale` over all of them, and a page states it with
:meth:`ColorScale.css_gradient` and :meth:`ColorScale.ticks` (a colour bar).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any, Literal

import numpy as np
from PIL import Image

from cnnlens.errors import InputError

#: Colour map of sequential scales (all values of one sign).
SEQUENTIAL = "jet"
#: Colour map of diverging scales (both signs), white at zero.
DIVERGING = "bwr"
#: Values within this fraction of the largest magnitude of zero count as zero when judging signs.
SIGN_TOLERANCE = 1e-6


@dataclass(frozen=True)
class ColorScale:
    """How values become colours.

    Attributes:
        kind: ``"sequential"`` (values of one sign, ``vmin`` to ``vmax`` span the colour map) or
            ``"diverging"`` (``vmin == -vmax``; zero is the colour map's middle).
        vmin: Value drawn with the colour map's first colour (clipped below).
        vmax: Value drawn with the colour map's last colour (clipped above).
        cmap: A matplotlib colour map name.
    """

    kind: Literal["sequential", "diverging"]
    vmin: float
    vmax: float
    cmap: str

    def normalize(self, values: np.ndarray) -> np.ndarray:
        """``values`` mapped to ``[0, 1]`` positions on the colour map (0.5 is zero when diverging)."""
        a = np.nan_to_num(np.asarray(values, dtype=np.float64))
        span = self.vmax - self.vmin
        if span <= 0:
            return np.full(a.shape, 0.5 if self.kind == "diverging" else 0.0)
        return np.clip((a - self.vmin) / span, 0.0, 1.0)

    def colorize(self, values: np.ndarray) -> np.ndarray:
        """``values`` as an ``(..., 3)`` uint8 colour image."""
        from matplotlib import colormaps

        rgba = colormaps[self.cmap](self.normalize(values))
        return (rgba[..., :3] * 255 + 0.5).astype(np.uint8)

    def ticks(self) -> list[float]:
        """Values to label a colour bar with: the ends, and zero when the scale is diverging."""
        if self.kind == "diverging":
            return [self.vmin, 0.0, self.vmax]
        return [self.vmin, self.vmax]

    def css_gradient(self, steps: int = 11) -> str:
        """A CSS ``linear-gradient`` (left to right, ``vmin`` to ``vmax``) drawing this colour bar."""
        colors = self.colorize(np.linspace(self.vmin, self.vmax, steps))
        stops = ", ".join(
            f"rgb({r},{g},{b}) {100 * i / (steps - 1):.0f}%" for i, (r, g, b) in enumerate(colors.tolist())
        )
        return f"linear-gradient(to right, {stops})"

    def describe(self) -> str:
        """One line for a page, e.g. ``sequential (jet) 2.8 to 19.1``."""
        middle = ", white at 0" if self.kind == "diverging" else ""
        return f"{self.kind} ({self.cmap}) {self.vmin:.3g} to {self.vmax:.3g}{middle}"

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def choose_scale(
    *maps: np.ndarray,
    percentile: float = 99.5,
    sequential: str = SEQUENTIAL,
    diverging: str = DIVERGING,
) -> ColorScale:
    """The colour scale for ``maps`` (one, or several to be compared side by side).

    All values ``>= 0``: sequential from their minimum to their ``percentile`` (a robust maximum,
    so one extreme pixel does not wash out the rest). All ``<= 0``: sequential from their
    ``100 - percentile`` to their maximum, on the reversed colour map (the strongest, most negative
    values get the colour of strong positive ones elsewhere). Both signs: diverging from ``-m`` to
    ``m`` with ``m`` the ``percentile`` of the magnitudes. Values within :data:`SIGN_TOLERANCE`
    of the largest magnitude count as zero when judging the signs.

    Raises:
        InputError: No maps, or a map with no finite value.
    """
    if not maps:
        raise InputError("choose_scale needs at least one map")
    finite = [a[np.isfinite(a)] for a in (np.asarray(m, dtype=np.float64).ravel() for m in maps)]
    values = np.concatenate(finite)
    if values.size == 0:
        raise InputError("the map has no finite value to choose a colour scale from")
    low, high = float(values.min()), float(values.max())
    tol = SIGN_TOLERANCE * max(abs(low), abs(high))
    if low >= -tol:
        top = float(np.percentile(values, percentile))
        return ColorScale("sequential", low, top if top > low else high, sequential)
    if high <= tol:
        bottom = float(np.percentile(values, 100 - percentile))
        reverse = sequential[:-2] if sequential.endswith("_r") else f"{sequential}_r"
        return ColorScale("sequential", bottom if bottom < high else low, high, reverse)
    m = float(np.percentile(np.abs(values), percentile)) or max(-low, high)
    return ColorScale("diverging", -m, m, diverging)


def normalize_map(attribution: np.ndarray, *, scale: ColorScale | None = None) -> np.ndarray:
    """A map as positions in ``[0, 1]`` on its colour scale (``scale``, or :func:`choose_scale`'s)."""
    return (scale or choose_scale(attribution)).normalize(attribution)


def colorize(attribution: np.ndarray, *, scale: ColorScale | None = None) -> np.ndarray:
    """A map as an ``(H, W, 3)`` uint8 colour image on ``scale`` (default: chosen by its values)."""
    return (scale or choose_scale(attribution)).colorize(attribution)


def overlay(
    image: Image.Image,
    attribution: np.ndarray,
    *,
    alpha: float = 0.5,
    scale: ColorScale | None = None,
) -> Image.Image:
    """Blend a colour-mapped attribution over an image; the map is resized to the image.

    Args:
        image: The picture to draw on.
        attribution: A 2-D map of any size.
        alpha: Heat-map opacity in [0, 1].
        scale: The colour scale; default :func:`choose_scale` of this map (pass one scale to draw
            maps that are compared side by side alike).
    """
    if not 0 <= alpha <= 1:
        raise InputError(f"alpha must be in [0, 1], got {alpha}")
    a = np.asarray(attribution)
    if a.ndim != 2:
        raise InputError(f"attribution must be a 2-D map, got shape {a.shape}")
    heat = Image.fromarray(colorize(a, scale=scale)).resize(image.size, Image.Resampling.BILINEAR)
    return Image.blend(image.convert("RGB"), heat, alpha)
