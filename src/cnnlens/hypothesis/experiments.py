"""Four experiments on one image: does the model need its parts, their arrangement, the object's
shape, or its texture? Each makes the image variants (:mod:`cnnlens.hypothesis.variants`), scores
them all in one batched call of the model, and returns a typed result with a verdict a person can read.

Every experiment works on the image as the model sees it (:func:`model_view`) and on masks mapped into
that view (:func:`cnnlens.data.masks.mask_to_input`). The target is the model's top-1 class on the
unchanged image unless one is given.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
import torchvision.transforms.functional as TF
from PIL import Image

from cnnlens.attribution.core.targets import class_index
from cnnlens.data.masks import mask_to_input
from cnnlens.data.transforms import to_uint8
from cnnlens.errors import InputError
from cnnlens.hypothesis import variants as V
from cnnlens.models import LoadedModel
from cnnlens.validation import check_positive_int

TOP = 5


@dataclass(frozen=True)
class Prediction:
    """One class of the model's output: index, name and probability."""

    index: int
    name: str
    prob: float

    def __str__(self) -> str:
        return f"{self.name} ({100 * self.prob:.1f}%)"


@dataclass
class VariantResult:
    """The model's answer on one image variant.

    Attributes:
        label: What the variant is, e.g. ``"part 3 occluded (mean)"``, ``"grid 4 #7"``.
        group: The variants it is pooled with (a grid size, ``"occlude"``, ``"silhouette"``...).
        top: The top-5 classes.
        target_prob: Probability of the experiment's target class.
        target_top1: Whether the target is still the top-1 class.
    """

    label: str
    group: str
    top: list[Prediction]
    target_prob: float
    target_top1: bool


@dataclass
class ExperimentResult:
    """One experiment on one image.

    Attributes:
        experiment: ``"parts"``, ``"shuffle"``, ``"shape"`` or ``"texture"``.
        target: The class tested (top-1 on the unchanged image unless given).
        before: Top-5 on the unchanged image.
        variants: The model's answer on each variant, in the order made.
        verdict: One line a person can read.
        summary: The numbers behind the verdict (per group rates, the worst part, the texture's class...).
        images: The variant images (``(H, W, 3)`` uint8, aligned with ``variants``); not serialised.
    """

    experiment: str
    target: Prediction
    before: list[Prediction]
    variants: list[VariantResult]
    verdict: str
    summary: dict[str, Any] = field(default_factory=dict)
    images: list[np.ndarray] = field(default_factory=list, repr=False)

    def groups(self) -> dict[str, list[VariantResult]]:
        out: dict[str, list[VariantResult]] = {}
        for v in self.variants:
            out.setdefault(v.group, []).append(v)
        return out

    def to_dict(self) -> dict[str, Any]:
        """A JSON-friendly form (without the images)."""

        def pred(p: Prediction) -> dict[str, Any]:
            return {"index": p.index, "name": p.name, "prob": round(p.prob, 6)}

        return {
            "experiment": self.experiment,
            "target": pred(self.target),
            "before": [pred(p) for p in self.before],
            "verdict": self.verdict,
            "summary": self.summary,
            "variants": [
                {
                    "label": v.label,
                    "group": v.group,
                    "target_prob": round(v.target_prob, 6),
                    "target_top1": v.target_top1,
                    "top": [pred(p) for p in v.top],
                }
                for v in self.variants
            ],
        }


# -------------------------------------------------------------------------------- model access


VIEWS: tuple[str, ...] = ("pad", "crop")


def model_view(model: LoadedModel, image: Image.Image, view: str = "crop") -> np.ndarray:
    """The image at the model's input size, ``(H, W, 3)`` uint8.

    ``crop``: as the model's preprocessing shows it (resized and centre-cropped). ``pad``: the whole
    photo, centred on a neutral grey square and resized, so an object that the crop would cut keeps
    its whole silhouette (the shape and texture experiments need it).
    """
    image = image.convert("RGB")
    if view == "crop":
        return to_uint8(model.preprocessing.view(image))
    if view != "pad":
        raise InputError(f"unknown view {view!r}; choose one of {', '.join(VIEWS)}")
    h, w = model.preprocessing.input_size
    side = max(image.size)
    square = Image.new("RGB", (side, side), (V.NEUTRAL,) * 3)
    square.paste(image, ((side - image.size[0]) // 2, (side - image.size[1]) // 2))
    return to_uint8(square.resize((w, h), Image.Resampling.BICUBIC))


def mask_view(model: LoadedModel, mask: np.ndarray, view: str = "crop") -> np.ndarray:
    """A boolean mask drawn on the photo, mapped like :func:`model_view` maps the photo."""
    if view == "crop":
        return mask_to_input(mask, model.preprocessing)
    if view != "pad":
        raise InputError(f"unknown view {view!r}; choose one of {', '.join(VIEWS)}")
    h, w = model.preprocessing.input_size
    side = max(mask.shape)
    square = np.zeros((side, side), dtype=np.uint8)
    top, left = (side - mask.shape[0]) // 2, (side - mask.shape[1]) // 2
    square[top : top + mask.shape[0], left : left + mask.shape[1]] = mask.astype(np.uint8) * 255
    return np.asarray(Image.fromarray(square).resize((w, h), Image.Resampling.NEAREST)) > 127


def to_batch(model: LoadedModel, images: Sequence[np.ndarray]) -> torch.Tensor:
    """Normalise views (already at the input size) into one ``(N, C, H, W)`` batch."""
    pre = model.preprocessing
    out = []
    for im in images:
        t = TF.to_tensor(np.array(V.check_image(im)))
        if pre.channels == 1:
            t = TF.rgb_to_grayscale(t)
        out.append(TF.normalize(t, list(pre.mean), list(pre.std)))
    return torch.stack(out)


def probabilities(model: LoadedModel, images: Sequence[np.ndarray], batch_size: int = 64) -> np.ndarray:
    """Softmax probabilities ``(N, classes)`` of views, in batches of ``batch_size`` (each batch is
    normalised only when its turn comes, so many variants never sit in memory as float tensors)."""
    if not images:
        return np.zeros((0, model.num_classes))
    chunks = [
        model.logits(to_batch(model, images[i : i + batch_size]), batch_size=batch_size).softmax(1).numpy()
        for i in range(0, len(images), batch_size)
    ]
    return np.concatenate(chunks)


def top_of(model: LoadedModel, probs: np.ndarray, k: int = TOP) -> list[Prediction]:
    order = np.argsort(-probs, kind="stable")[: min(k, probs.shape[0])]
    return [Prediction(int(i), model.class_names[int(i)], float(probs[i])) for i in order]


def resolve_target(model: LoadedModel, target: int | str | None, probs: np.ndarray) -> Prediction:
    idx = (
        int(np.argmax(probs)) if target is None else class_index(target, model.class_names, model.num_classes)
    )
    return Prediction(idx, model.class_names[idx], float(probs[idx]))


def _score(
    model: LoadedModel,
    view: np.ndarray,
    made: list[tuple[str, str, np.ndarray]],
    target: int | str | None,
    extra: Sequence[np.ndarray] = (),
) -> tuple[Prediction, list[Prediction], list[VariantResult], np.ndarray]:
    """One batched call: the unchanged view, every variant, then ``extra`` images. Returns the
    target, the top-5 on ``view``, each variant's result, and the probabilities of the variants
    followed by those of ``extra``."""
    probs = probabilities(model, [view, *(im for _, _, im in made), *extra])
    tgt = resolve_target(model, target, probs[0])
    results = []
    for (label, group, _), p in zip(made, probs[1 : 1 + len(made)]):
        results.append(
            VariantResult(label, group, top_of(model, p), float(p[tgt.index]), int(np.argmax(p)) == tgt.index)
        )
    return tgt, top_of(model, probs[0]), results, probs[1:]


def _pct(p: float) -> str:
    return f"{100 * p:.1f}%"


# ----------------------------------------------------------------------------------------- parts


def parts_experiment(
    model: LoadedModel,
    view: np.ndarray,
    parts: Sequence[np.ndarray],
    *,
    fill: str = "mean",
    keep_one: bool = False,
    seed: int = 0,
    target: int | str | None = None,
) -> ExperimentResult:
    """Occlude each part in turn (and, with ``keep_one``, everything but each part).

    Args:
        model: The classifier.
        view: The image as the model sees it (:func:`model_view`).
        parts: Boolean masks of ``view``'s size, one per part.
        fill: What replaces an occluded part: ``mean`` (the image's mean colour), ``blur``, ``noise``
            or ``black``.
        keep_one: Also show the model each part alone, the rest occluded.
        seed: Seed of the noise fill.
        target: Class to follow (index or name); default the top-1 on ``view``.
    """
    V.check_image(view)
    if not parts:
        raise InputError("no parts to occlude; give --mask, --boxes, --grid or --superpixels")
    parts = [V.check_mask(p, view.shape, f"part {i}") for i, p in enumerate(parts)]
    filler = V.fill_image(view, fill, np.random.default_rng(seed))
    made = [(f"part {i} occluded", "occlude", V.occlude(view, p, filler)) for i, p in enumerate(parts)]
    if keep_one:
        made += [
            (f"only part {i} kept", "keep one", V.occlude(view, ~p, filler)) for i, p in enumerate(parts)
        ]
    tgt, before, results, _ = _score(model, view, made, target)
    occluded = [r for r in results if r.group == "occlude"]
    worst = int(np.argmin([r.target_prob for r in occluded]))
    summary: dict[str, Any] = {
        "fill": fill,
        "parts": len(parts),
        "part_pixels": [int(p.sum()) for p in parts],
        "worst_part": worst,
        "worst_prob": occluded[worst].target_prob,
        "top1_rate_occluded": float(np.mean([r.target_top1 for r in occluded])),
    }
    if keep_one:
        kept = [r for r in results if r.group == "keep one"]
        summary["top1_rate_keep_one"] = float(np.mean([r.target_top1 for r in kept]))
        summary["best_single_part"] = int(np.argmax([r.target_prob for r in kept]))
    return ExperimentResult(
        "parts", tgt, before, results, parts_verdict(tgt, occluded, worst), summary, [im for _, _, im in made]
    )


def parts_verdict(target: Prediction, occluded: list[VariantResult], worst: int) -> str:
    needed = [i for i, r in enumerate(occluded) if not r.target_top1]
    low = occluded[worst]
    in_top5 = sum(any(p.index == target.index for p in r.top) for r in occluded)
    if not needed:
        return (
            f"no single part is needed: {target.name} stays top-1 with any one of the {len(occluded)} "
            f"parts occluded (min {_pct(low.target_prob)}, part {worst})"
        )
    names = ", ".join(str(i) for i in needed)
    return (
        f"part{'s' if len(needed) > 1 else ''} {names} {'are' if len(needed) > 1 else 'is'} needed: "
        f"occluding {'one of them' if len(needed) > 1 else 'it'} drops {target.name} from top-1; "
        f"worst is part {worst} ({target.name} {_pct(low.target_prob)}, top-1 {low.top[0]}); "
        f"{target.name} stays in the top-5 in {in_top5} of {len(occluded)}"
    )


# --------------------------------------------------------------------------------------- shuffle


def shuffle_experiment(
    model: LoadedModel,
    view: np.ndarray,
    *,
    grids: Sequence[int] = (2, 3, 4),
    n: int = 20,
    seed: int = 0,
    box: tuple[int, int, int, int] | None = None,
    target: int | str | None = None,
) -> ExperimentResult:
    """Jigsaw shuffles: ``n`` random (non-identity) permutations of ``g x g`` tiles per grid size ``g``,
    of the whole view or only of ``box`` (``(top, left, bottom, right)``, e.g. the object's bounding
    box); the target's confidence and top-1 rate per grid size.

    The permutations are drawn from ``numpy.random.default_rng(seed)`` in grid order.
    """
    V.check_image(view)
    check_positive_int("--n", n)
    if not grids:
        raise InputError("--grid needs at least one grid size, e.g. 2,3,4")
    rng = np.random.default_rng(seed)
    made = []
    for g in grids:
        if not isinstance(g, (int, np.integer)) or g < 2:
            raise InputError(f"--grid sizes must be at least 2 (tiles per side), got {g}")
        for k in range(n):
            made.append(
                (f"grid {g} #{k}", f"grid {g}", V.jigsaw(view, int(g), V.random_permutation(g * g, rng), box))
            )
    tgt, before, results, _ = _score(model, view, made, target)
    per_grid: dict[str, dict[str, float]] = {}
    for g in grids:
        probs = np.array([r.target_prob for r in results if r.group == f"grid {g}"])
        rate = float(np.mean([r.target_top1 for r in results if r.group == f"grid {g}"]))
        per_grid[str(g)] = {
            "top1_rate": rate,
            "mean": float(probs.mean()),
            "median": float(np.median(probs)),
            "min": float(probs.min()),
            "max": float(probs.max()),
        }
    summary = {"grids": [int(g) for g in grids], "n": n, "seed": seed, "box": box, "per_grid": per_grid}
    return ExperimentResult(
        "shuffle", tgt, before, results, shuffle_verdict(tgt, per_grid), summary, [im for _, _, im in made]
    )


def shuffle_verdict(target: Prediction, per_grid: dict[str, dict[str, float]]) -> str:
    rates = ", ".join(f"{g}x{g}: {_pct(s['top1_rate'])}" for g, s in per_grid.items())
    means = ", ".join(f"{_pct(s['mean'])}" for s in per_grid.values())
    if min(s["top1_rate"] for s in per_grid.values()) >= 0.5:
        return (
            f"spatial arrangement does not matter much: {target.name} stays top-1 in most shuffles "
            f"({rates}; mean confidence {means}, unshuffled {_pct(target.prob)})"
        )
    return (
        f"spatial arrangement matters: {target.name} is top-1 in few shuffles ({rates}; mean "
        f"confidence {means}, unshuffled {_pct(target.prob)})"
    )


# ----------------------------------------------------------------------------------------- shape


def shape_experiment(
    model: LoadedModel,
    view: np.ndarray,
    mask: np.ndarray,
    *,
    edge_width: int = 3,
    target: int | str | None = None,
) -> ExperimentResult:
    """The object's shape without its texture: the silhouette filled flat (black on white), its
    outline only, and (texture kept, for comparison) the object on a neutral grey background."""
    V.check_image(view)
    mask = V.check_object(mask, view.shape)
    made = [
        ("silhouette (flat)", "silhouette", V.silhouette(mask)),
        ("outline only", "outline", V.outline(mask, edge_width)),
        ("object on neutral background", "neutral background", V.on_background(view, mask)),
    ]
    tgt, before, results, _ = _score(model, view, made, target)
    summary = {
        r.group: {"target_prob": r.target_prob, "target_top1": r.target_top1, "top1": r.top[0].name}
        for r in results
    }
    return ExperimentResult(
        "shape", tgt, before, results, shape_verdict(tgt, results), summary, [im for _, _, im in made]
    )


def shape_verdict(target: Prediction, results: list[VariantResult]) -> str:
    sil, edge, neutral = results
    shape_only = [r for r in (sil, edge) if r.target_top1]
    context = (
        f"; on a neutral background it {'stays' if neutral.target_top1 else 'is not'} top-1 "
        f"({_pct(neutral.target_prob)})"
    )
    if shape_only:
        which = " and ".join(r.group for r in shape_only)
        best = _pct(max(r.target_prob for r in shape_only))
        return f"the class survives without texture: {target.name} is top-1 on the {which} ({best}){context}"
    return (
        f"shape alone is not enough: on the silhouette the model says {sil.top[0]}, {target.name} "
        f"{_pct(sil.target_prob)}; on the outline {edge.top[0]}{context}"
    )


# --------------------------------------------------------------------------------------- texture


def texture_experiment(
    model: LoadedModel,
    view: np.ndarray,
    mask: np.ndarray,
    texture: np.ndarray,
    *,
    mode: str = "tile",
    patch: int | None = None,
    seed: int = 0,
    target: int | str | None = None,
) -> ExperimentResult:
    """A cue conflict: the object's mask filled with another image's texture.

    The shape's class is the target (top-1 on the unchanged view); the texture's class is the model's
    top-1 on the texture alone (the same full-frame texture, :func:`variants.texture_field`). Two
    variants: the textured object in its scene, and on a neutral grey background.

    Args:
        texture: The texture source, an ``(h, w, 3)`` uint8 image (any size).
        mode: How the texture fills the frame: ``image``, ``tile`` or ``patches``
            (:func:`variants.texture_field`).
        patch: Side of the tiled or sampled patch (default a third of the texture's short side).
    """
    V.check_image(view)
    mask = V.check_object(mask, view.shape)
    field_ = V.texture_field(texture, view.shape, mode, np.random.default_rng(seed), patch)
    made = [
        ("object filled with the texture", "in scene", V.texture_swap(view, mask, field_)),
        ("textured silhouette on grey", "on grey", V.texture_swap(view, mask, field_, V.NEUTRAL)),
    ]
    tgt, before, results, probs = _score(model, view, made, target, extra=[field_])
    tex = top_of(model, probs[-1], 1)[0]
    summary: dict[str, Any] = {
        "mode": mode,
        "texture_class": {"index": tex.index, "name": tex.name, "prob": tex.prob},
    }
    for r, p in zip(results, probs):
        summary[r.group] = {
            "top1": r.top[0].name,
            "shape_prob": r.target_prob,
            "texture_prob": float(p[tex.index]),
            "winner": winner(r.top[0].index, tgt.index, tex.index),
        }
    return ExperimentResult(
        "texture",
        tgt,
        before,
        results,
        texture_verdict(tgt, tex, results),
        summary,
        [*(im for _, _, im in made), field_],
    )


def winner(top1: int, shape: int, texture: int) -> str:
    """``"shape"``, ``"texture"`` or ``"other"``: which cue the decision ``top1`` follows."""
    if shape == texture:
        return "both"
    return "shape" if top1 == shape else "texture" if top1 == texture else "other"


def texture_verdict(target: Prediction, texture: Prediction, results: list[VariantResult]) -> str:
    scene = results[0]
    if target.index == texture.index:
        return f"no conflict: the texture alone is also {texture.name}; choose a texture of another class"
    w = winner(scene.top[0].index, target.index, texture.index)
    if w == "texture":
        return (
            f"texture wins: filled with a texture the model calls {texture.name}, the object is "
            f"{scene.top[0]}; the shape's class {target.name} falls to {_pct(scene.target_prob)}"
        )
    if w == "shape":
        return (
            f"shape wins: filled with a texture the model calls {texture.name}, the object stays "
            f"{scene.top[0]}"
        )
    return (
        f"neither cue wins: filled with a texture the model calls {texture.name}, the object is "
        f"{scene.top[0]}; the shape's class {target.name} {_pct(scene.target_prob)}"
    )
