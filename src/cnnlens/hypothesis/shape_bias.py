"""The shape-bias score of Geirhos et al. (ICLR 2019) on a cue-conflict set built offline.

A cue-conflict image is an object's silhouette (its exact mask) filled with the texture of another
image, on a flat grey background. Geirhos et al. take shape and texture labels from 16 ImageNet
super-classes; with a 1000-class model and our own images the labels are the **model's own decisions**:

* the *shape class* of a shape source is the model's top-1 class on the source (a photo as it is, or
  a synthetic shape filled flat, black on white);
* the *texture class* of a texture is the model's top-1 class on the very texture field used for the
  fill, shown alone over the whole frame;
* pairs whose two classes are the same carry no conflict and are left out.

The shape bias is the fraction of decisions that follow shape among those that follow either cue:
``shape / (shape + texture)``; decisions for a third class are counted but left out of the fraction
(as in the paper). A second, forced-choice score restricts each decision to the two candidate classes
(the one of the two with the higher probability), the analogue of the paper's 16-class decision
mapping: every conflicting item counts, so its interval is narrower. The 95 % interval is Wilson's
score interval for a binomial proportion; it treats
the decisions as independent, while items sharing a shape or a texture source are not, so read it as
a lower bound on the uncertainty (the per-source table shows how much each source weighs).

References:
    Geirhos, Rubisch, Michaelis, Bethge, Wichmann, Brendel. ImageNet-trained CNNs are biased towards
    texture; increasing shape bias improves accuracy and robustness. ICLR 2019.
    Wilson. Probable inference, the law of succession, and statistical inference. JASA 1927.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from cnnlens.data.masks import sample_mask, sample_mask_names
from cnnlens.data.samples import available_samples, load_sample
from cnnlens.data.synthetic import SHAPES
from cnnlens.errors import InputError
from cnnlens.hypothesis import variants as V
from cnnlens.hypothesis.experiments import mask_view, model_view, probabilities, winner
from cnnlens.models import LoadedModel
from cnnlens.validation import check_positive_int

#: Texture sources: (name, loader of an (h, w, 3) uint8 image). skimage and scikit-learn ship them.
TEXTURE_NAMES: tuple[str, ...] = (
    "brick",
    "grass",
    "gravel",
    "immunohistochemistry",
    "hubble_deep_field",
    "coffee",
    "chelsea",
    "china",
    "flower",
    "astronaut",
    "rocket",
)

SOURCE_KINDS: tuple[str, ...] = ("photos", "synth")


def load_texture(name: str) -> np.ndarray:
    """A texture source by name (:data:`TEXTURE_NAMES`) as an ``(h, w, 3)`` uint8 array."""
    if name in available_samples():
        return np.asarray(load_sample(name))
    from skimage import data

    if name not in TEXTURE_NAMES:
        raise InputError(f"unknown texture {name!r}; choose from {', '.join(TEXTURE_NAMES)}")
    arr = np.asarray(getattr(data, name)())
    return np.ascontiguousarray(np.stack([arr] * 3, -1) if arr.ndim == 2 else arr[..., :3]).astype(np.uint8)


@dataclass
class ShapeSource:
    """An object with its exact mask in the model's input view, and the model's class for it."""

    name: str
    kind: str
    view: np.ndarray = field(repr=False)
    mask: np.ndarray = field(repr=False)
    shape_class: int = -1


def shape_sources(
    model: LoadedModel, kinds: tuple[str, ...] = SOURCE_KINDS, seed: int = 0
) -> list[ShapeSource]:
    """The shape sources: the sample photos with their hand-drawn masks (``photos``; the whole photo
    on a grey square, :func:`model_view` ``"pad"``, so that the crop does not cut the silhouette), and each
    shape of ``cnnlens data synth`` (:data:`cnnlens.data.synthetic.SHAPES`) drawn large at the input
    size, black on white (``synth``). Their ``shape_class`` is filled in by :func:`classify_sources`."""
    unknown_kinds = set(kinds) - set(SOURCE_KINDS)
    if unknown_kinds or not kinds:
        raise InputError(f"--sources must be some of {', '.join(SOURCE_KINDS)}, got {','.join(kinds)}")
    out: list[ShapeSource] = []
    if "photos" in kinds:
        for name in sample_mask_names():
            view = model_view(model, load_sample(name), "pad")
            out.append(ShapeSource(name, "photo", view, mask_view(model, sample_mask(name), "pad")))
    if "synth" in kinds:
        rng = np.random.default_rng(seed)
        size = model.preprocessing.input_size[0]
        for name, draw in SHAPES.items():
            mask = draw(size, 0.38 * size, (size / 2, size / 2), float(rng.uniform(0, 2 * np.pi)))
            out.append(ShapeSource(name, "synth", V.silhouette(mask), mask))
    return out


def classify_sources(model: LoadedModel, sources: list[ShapeSource]) -> None:
    """Set each source's ``shape_class``: the model's top-1 on the source image (one batch)."""
    probs = probabilities(model, [s.view for s in sources])
    for s, p in zip(sources, probs):
        s.shape_class = int(np.argmax(p))


@dataclass
class CueConflict:
    """One cue-conflict image and the model's decision on it."""

    shape_source: str
    texture_source: str
    mode: str
    patch: int
    shape_class: str
    texture_class: str
    decision: str
    follows: str  # "shape", "texture", "other" or "both" (no conflict: left out)
    shape_prob: float
    texture_prob: float


@dataclass
class ShapeBiasResult:
    """The shape-bias score over a cue-conflict set.

    Attributes:
        shape_bias: ``shape / (shape + texture)`` (``nan`` when no decision follows either cue).
        ci_low, ci_high: Wilson's 95 % score interval.
        shape, texture, other: Decisions that follow the shape, the texture, or neither.
        skipped: Items left out because shape and texture class were the same.
        forced_shape: Conflicting items whose shape class is more probable than their texture class;
            ``forced_bias = forced_shape / (n - skipped)`` with its interval ``forced_low, forced_high``.
        items: Every item (``skipped`` ones included, with ``follows="both"``).
    """

    model: str
    n: int
    seed: int
    shape_bias: float
    ci_low: float
    ci_high: float
    shape: int
    texture: int
    other: int
    skipped: int
    forced_shape: int
    forced_bias: float
    forced_low: float
    forced_high: float
    items: list[CueConflict] = field(repr=False)
    images: list[np.ndarray] = field(default_factory=list, repr=False)

    def verdict(self) -> str:
        if self.shape + self.texture == 0:
            return "no decision followed either cue; the shape bias is undefined"
        lean = "shape" if self.shape_bias > 0.5 else "texture"
        return (
            f"shape bias {self.shape_bias:.2f} (95% CI {self.ci_low:.2f}-{self.ci_high:.2f}): the model "
            f"follows {lean} in {max(self.shape, self.texture)} of {self.shape + self.texture} "
            f"cue-conflict decisions ({self.other} followed neither, {self.skipped} pairs had no conflict); "
            f"forced choice between the two classes: {self.forced_bias:.2f} "
            f"({self.forced_low:.2f}-{self.forced_high:.2f}, {self.n - self.skipped} images)"
        )

    def per_source(self) -> list[list[Any]]:
        """Rows ``[shape source, shape, texture, other, shape bias]``."""
        rows: list[list[Any]] = []
        for name in dict.fromkeys(i.shape_source for i in self.items):
            its = [i for i in self.items if i.shape_source == name and i.follows != "both"]
            s = sum(i.follows == "shape" for i in its)
            t = sum(i.follows == "texture" for i in its)
            rows.append([name, s, t, len(its) - s - t, s / (s + t) if s + t else float("nan")])
        return rows

    def to_dict(self) -> dict[str, Any]:
        d = {k: v for k, v in asdict(self).items() if k not in ("items", "images")}
        d["verdict"] = self.verdict()
        d["items"] = [asdict(i) for i in self.items]
        return d


def wilson_interval(successes: int, total: int, z: float = 1.959964) -> tuple[float, float]:
    """Wilson's score interval of a binomial proportion (``(nan, nan)`` when ``total`` is 0)."""
    if total <= 0:
        return (float("nan"), float("nan"))
    p = successes / total
    denom = 1 + z * z / total
    centre = (p + z * z / (2 * total)) / denom
    half = z * math.sqrt(p * (1 - p) / total + z * z / (4 * total * total)) / denom
    return (max(0.0, centre - half), min(1.0, centre + half))


@dataclass(frozen=True)
class _Planned:
    source: ShapeSource
    texture: str
    mode: str
    patch: int
    seed: int


def plan_items(
    sources: list[ShapeSource], textures: tuple[str, ...], n: int, side: int, seed: int
) -> list[_Planned]:
    """Draw the ``n`` items: a shape source, a texture other than the source itself, a fill mode
    (``tile`` or ``patches``), a patch side between a sixth and a half of ``side``, a fill seed."""
    rng = np.random.default_rng(seed)
    plan = []
    for _ in range(n):
        src = sources[int(rng.integers(len(sources)))]
        choices = [t for t in textures if t != src.name] or list(textures)
        texture = choices[int(rng.integers(len(choices)))]
        mode = ("tile", "patches")[int(rng.integers(2))]
        patch = int(rng.integers(side // 6, side // 2 + 1))
        plan.append(_Planned(src, texture, mode, patch, int(rng.integers(2**31))))
    return plan


def shape_bias(
    model: LoadedModel,
    *,
    n: int = 200,
    seed: int = 0,
    kinds: tuple[str, ...] = SOURCE_KINDS,
    textures: tuple[str, ...] | Mapping[str, np.ndarray] = TEXTURE_NAMES,
    batch: int = 32,
    keep_images: int = 0,
    progress: Callable[[int], None] | None = None,
) -> ShapeBiasResult:
    """Score ``n`` cue-conflict images and return the shape bias with its Wilson interval.

    The items are drawn by :func:`plan_items` from ``numpy.random.default_rng(seed)``. Each batch of
    ``batch`` items runs as one call of the model on ``2 * batch`` images: the cue-conflict images and
    the texture fields alone.

    Args:
        kinds: Shape sources (:func:`shape_sources`).
        textures: Texture sources: names of :data:`TEXTURE_NAMES`, or images by name.
        keep_images: Keep the first this many cue-conflict images (for a figure).
        progress: Called with the number of items done after each batch.
    """
    check_positive_int("--n", n)
    check_positive_int("batch", batch)
    if not textures:
        raise InputError(f"give at least one texture of {', '.join(TEXTURE_NAMES)}")
    sources = shape_sources(model, kinds, seed)
    classify_sources(model, sources)
    if isinstance(textures, Mapping):
        tex = {name: V.check_image(np.asarray(im)) for name, im in textures.items()}
    else:
        tex = {name: load_texture(name) for name in textures}
    plan = plan_items(sources, tuple(tex), n, model.preprocessing.input_size[0], seed)
    names = model.class_names
    items: list[CueConflict] = []
    images: list[np.ndarray] = []
    for start in range(0, n, batch):
        chunk = plan[start : start + batch]
        fields = [
            V.texture_field(
                tex[it.texture],
                it.source.view.shape,
                it.mode,
                np.random.default_rng(it.seed),
                min(it.patch, *tex[it.texture].shape[:2]),
            )
            for it in chunk
        ]
        conflicts = [
            V.texture_swap(it.source.view, it.source.mask, f, V.NEUTRAL) for it, f in zip(chunk, fields)
        ]
        probs = probabilities(model, [*conflicts, *fields], batch_size=2 * batch)
        for it, p, q in zip(chunk, probs[: len(chunk)], probs[len(chunk) :]):
            shape_cls, texture_cls, top1 = it.source.shape_class, int(np.argmax(q)), int(np.argmax(p))
            items.append(
                CueConflict(
                    shape_source=it.source.name,
                    texture_source=it.texture,
                    mode=it.mode,
                    patch=it.patch,
                    shape_class=names[shape_cls],
                    texture_class=names[texture_cls],
                    decision=names[top1],
                    follows=winner(top1, shape_cls, texture_cls),
                    shape_prob=float(p[shape_cls]),
                    texture_prob=float(p[texture_cls]),
                )
            )
        images += conflicts[: max(0, keep_images - len(images))]
        if progress is not None:
            progress(len(chunk))
    return summarise(model.name, n, seed, items, images)


def summarise(
    model: str, n: int, seed: int, items: list[CueConflict], images: list[np.ndarray]
) -> ShapeBiasResult:
    """The counts, the shape bias and the intervals of scored items."""
    n_shape = sum(i.follows == "shape" for i in items)
    n_texture = sum(i.follows == "texture" for i in items)
    skipped = sum(i.follows == "both" for i in items)
    decided = n_shape + n_texture
    low, high = wilson_interval(n_shape, decided)
    conflicting = [i for i in items if i.follows != "both"]
    forced = sum(i.shape_prob > i.texture_prob for i in conflicting)
    f_low, f_high = wilson_interval(forced, len(conflicting))
    return ShapeBiasResult(
        model=model,
        n=n,
        seed=seed,
        shape_bias=n_shape / decided if decided else float("nan"),
        ci_low=low,
        ci_high=high,
        shape=n_shape,
        texture=n_texture,
        other=len(items) - decided - skipped,
        skipped=skipped,
        forced_shape=forced,
        forced_bias=forced / len(conflicting) if conflicting else float("nan"),
        forced_low=f_low,
        forced_high=f_high,
        items=items,
        images=images,
    )
