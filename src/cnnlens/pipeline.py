"""Explaining many images with several methods and writing the results: the engine behind
``cnnlens explain`` and ``cnnlens demo``.

For each image and method it writes ``<out>/<image-stem>/<method>.png`` (overlay) and ``.npz``
(attribution and the method's extra arrays), and returns a summary (predictions, timings, the
methods' scalar results, errors) that is also written as ``<out>/summary.json``.
"""

from __future__ import annotations

import json
import logging
import os
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from PIL import Image

from cnnlens.attribution.core.base import Attribution
from cnnlens.attribution.core.explanation import EXTRA_PREFIX, Explanation
from cnnlens.attribution.core.targets import class_index
from cnnlens.data.images import MAX_PIXELS, load_image
from cnnlens.errors import CnnlensError
from cnnlens.models.loaded import LoadedModel
from cnnlens.outputs import subfolder, write_json, write_with

log = logging.getLogger(__name__)

Progress = Callable[[str], None]


@dataclass
class ImageResult:
    """Everything produced for one image."""

    stem: str
    source: str
    image: Image.Image
    predictions: list[tuple[int, str, float]]
    explanations: list[tuple[Explanation, Path, Path]] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)


def load_images(
    paths: Sequence[str | os.PathLike[str]], *, max_pixels: int = MAX_PIXELS
) -> tuple[list[tuple[str, str, Image.Image]], list[dict[str, str]]]:
    """Load image files, keeping going past bad ones.

    Args:
        paths: Image files.
        max_pixels: Refuse images with more pixels than this (see :func:`~cnnlens.data.load_image`).

    Returns:
        ``(stem, path, image)`` for each readable file (stems made unique), and one
        ``{"path", "error"}`` record per file that could not be read.
    """
    loaded: list[tuple[str, str, Image.Image]] = []
    errors: list[dict[str, str]] = []
    used: set[str] = set()
    for path in paths:
        try:
            image = load_image(path, max_pixels=max_pixels)
        except CnnlensError as err:
            log.info("%s", err)
            errors.append({"path": str(path), "error": str(err)})
            continue
        loaded.append((unique_stem(Path(path).stem, used), str(path), image))
    return loaded, errors


def unique_stem(stem: str, used: set[str]) -> str:
    """A file-system-safe version of ``stem`` not in ``used`` (``name``, ``name-2``...); adds it."""
    base = re.sub(r"[^A-Za-z0-9._-]+", "_", stem).strip("._") or "image"
    candidate, i = base, 2
    while candidate in used:
        candidate, i = f"{base}-{i}", i + 1
    used.add(candidate)
    return candidate


def check_targets(model: LoadedModel, targets: Sequence[int | str]) -> list[int]:
    """Resolve user-given targets to class indices once, before any work is done."""
    return [class_index(t, model.class_names, model.num_classes) for t in targets]


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9]+", "_", text).strip("_").lower() or "class"


def explain_images(
    model: LoadedModel,
    images: Sequence[tuple[str, str, Image.Image]],
    methods: Sequence[Attribution],
    out: str | os.PathLike[str],
    *,
    targets: Sequence[int] = (),
    top: int = 5,
    progress: Progress | None = None,
) -> list[ImageResult]:
    """Explain each image with each method and write PNG overlays and NPZ maps under ``out``.

    Args:
        model: The classifier.
        images: ``(stem, source, image)`` triples, e.g. from :func:`load_images`.
        methods: Attribution methods built on ``model``.
        out: Output folder (created).
        targets: Class indices to explain; empty means each image's top-1 class.
        top: How many predictions to record.
        progress: Called with a short description after each explanation.

    A method that fails on one image is recorded in that image's errors; the rest go on.
    """
    root = Path(out)
    results: list[ImageResult] = []
    for stem, source, image in images:
        x = model.prepare(image)
        result = ImageResult(stem, source, image, model.top_k(x, top)[0])
        folder = subfolder(root, stem)
        wanted: list[int | None] = list(targets) or [None]
        for target in wanted:
            for method in methods:
                suffix = ""
                if len(wanted) > 1 and target is not None:
                    suffix = f"-{_slug(model.class_names[target])}"
                try:
                    exp = method.explain(x, target)
                except (CnnlensError, ValueError, TypeError, RuntimeError) as err:
                    msg = f"{source}: {method.name} failed: {err}"
                    log.info("%s", msg)
                    result.errors.append(msg)
                    continue
                png = folder / f"{method.name}{suffix}.png"
                npz = exp.save(folder / f"{method.name}{suffix}.npz")
                write_png(exp.render(image, preprocessing=model.preprocessing), png)
                result.explanations.append((exp, png, npz))
                if progress is not None:
                    progress(f"{stem}: {method.name}")
        results.append(result)
    return results


def write_png(image: Image.Image, path: Path) -> Path:
    """Save ``image`` as a PNG atomically, never through a symbolic link (see :mod:`cnnlens.outputs`)."""
    return write_with(path, lambda f: image.save(f, format="PNG"))


def summarize(
    model: LoadedModel, results: Sequence[ImageResult], errors: Sequence[dict[str, str]], out: Path
) -> dict[str, Any]:
    """The JSON summary of a run: model, predictions and per-method timings per image, errors."""
    return {
        "model": {"name": model.name, "arch": model.arch, "source": model.source},
        "images": [
            {
                "stem": r.stem,
                "source": r.source,
                "predictions": [
                    {"index": i, "class_name": n, "probability": round(p, 6)} for i, n, p in r.predictions
                ],
                "explanations": [
                    {
                        "method": e.method,
                        "layer": e.layer,
                        "target": int(e.targets[0]),
                        "class_name": e.target_name(),
                        "score": round(float(e.scores[0]), 6),
                        "seconds": round(e.seconds, 4),
                        "params": e.params,
                        "png": str(png.relative_to(out)),
                        "npz": str(npz.relative_to(out)),
                        **extras_summary(e),
                    }
                    for e, png, npz in r.explanations
                ],
                "errors": r.errors,
            }
            for r in results
        ],
        "errors": list(errors),
    }


def extras_summary(exp: Explanation) -> dict[str, Any]:
    """What ``summary.json`` records of a method's extras (for the first input of ``exp``).

    ``extras``: the scalar and small ones by name (e.g. Integrated Gradients' ``completeness_gap``,
    LIME's ``r2``, KernelSHAP's ``sum_gap``); ``extra_arrays``: the ``.npz`` keys of the larger ones
    (e.g. LIME's ``extra_segments``, ``extra_weights`` and ``extra_top_mask``).
    """
    small = exp.small_extras()
    arrays = [f"{EXTRA_PREFIX}{name}" for name in exp.extras if name not in small]
    return {"extras": small, "extra_arrays": arrays}


def write_summary(summary: dict[str, Any], out: str | os.PathLike[str]) -> Path:
    """Write ``summary`` into ``out/summary.json``, merged with the summary already there.

    The entries of an earlier run into the same folder are kept, since their files stay on disk:
    an image entry is keyed by its ``stem`` (its folder under ``out``) and replaced by the new
    run's entry of the same stem; an error record is keyed by its ``path`` and dropped when the new
    run read or failed that path again. Each image entry records the ``model`` that explained it.
    The file is written atomically and never through a symbolic link (see :mod:`cnnlens.outputs`).

    Returns:
        The path of ``summary.json``.
    """
    path = Path(out) / "summary.json"
    merged = merge_summaries(read_summary(path), summary)
    return write_json(path, merged, indent=2, default=str)


def read_summary(path: Path) -> dict[str, Any] | None:
    """The summary in ``path``, or ``None`` when there is none or it is not a cnnlens summary."""
    if path.is_symlink() or not path.is_file():
        return None
    try:
        old = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        log.warning("%s is not readable JSON (%s); it is replaced", path, err)
        return None
    if not isinstance(old, dict) or not isinstance(old.get("images"), list):
        log.warning("%s is not a cnnlens summary; it is replaced", path)
        return None
    return old


def merge_summaries(old: dict[str, Any] | None, new: dict[str, Any]) -> dict[str, Any]:
    """``new`` with the image entries and errors of ``old`` it does not replace (see
    :func:`write_summary`)."""
    images = [{**entry, "model": entry.get("model", new["model"])} for entry in new["images"]]
    if old is None:
        return {**new, "images": images}
    old_model = old.get("model")
    stems = {e["stem"] for e in images}
    kept = [
        {**e, "model": e.get("model", old_model)}
        for e in old["images"]
        if isinstance(e, dict) and e.get("stem") not in stems
    ]
    paths = {e["source"] for e in images} | {e["path"] for e in new["errors"]}
    old_errors = [e for e in old.get("errors", []) if isinstance(e, dict) and e.get("path") not in paths]
    return {**new, "images": kept + images, "errors": old_errors + list(new["errors"])}
