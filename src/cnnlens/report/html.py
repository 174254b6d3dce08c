"""Self-contained HTML: every image is embedded as a data URI, no external files or scripts."""

from __future__ import annotations

import base64
import io
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from jinja2 import Environment, PackageLoader, select_autoescape
from PIL import Image

from cnnlens.attribution.core.explanation import Explanation
from cnnlens.data.transforms import Preprocessing
from cnnlens.errors import CnnlensError
from cnnlens.outputs import write_text
from cnnlens.pipeline import ImageResult
from cnnlens.viz.overlay import ColorScale


def _env() -> Environment:
    return Environment(
        loader=PackageLoader("cnnlens.report", "templates"),
        autoescape=select_autoescape(["html", "j2"]),
    )


def image_data_uri(image: Image.Image, max_side: int = 320, fmt: str = "JPEG") -> str:
    """An image as a ``data:`` URI, scaled down to ``max_side`` pixels."""
    im = image.convert("RGB")
    if max(im.size) > max_side:
        scale = max_side / max(im.size)
        im = im.resize((round(im.width * scale), round(im.height * scale)), Image.Resampling.BILINEAR)
    buf = io.BytesIO()
    im.save(buf, format=fmt, quality=85)
    mime = "jpeg" if fmt.upper() == "JPEG" else fmt.lower()
    return f"data:image/{mime};base64,{base64.b64encode(buf.getvalue()).decode('ascii')}"


#: Scalar extras worth a line under a method's overlay: extra name -> label and number format.
EXTRA_NOTES: dict[str, tuple[str, str]] = {
    "completeness_gap": ("completeness gap", "{:.3g}"),  # Integrated Gradients, DeepLIFT(-SHAP)
    "sum_gap": ("Shapley sum gap", "{:.2g}"),  # KernelSHAP
    "r2": ("surrogate R\u00b2", "{:.2f}"),  # LIME
    "relevance_sum": ("relevance sum", "{:.4g}"),  # LRP: the input relevance...
    "target_logit": ("of logit", "{:.4g}"),  # ...and the output relevance it started from
}


def extra_notes(exp: Explanation) -> list[str]:
    """Short lines for the scalar extras of :data:`EXTRA_NOTES` that ``exp`` carries."""
    small = exp.small_extras()
    return [
        f"{label} {fmt.format(small[name])}"
        for name, (label, fmt) in EXTRA_NOTES.items()
        if isinstance(small.get(name), (int, float))
    ]


def color_bar(scale: ColorScale) -> dict[str, Any]:
    """What a template needs to draw ``scale`` as a colour bar: CSS gradient, tick labels, a line."""
    return {
        "gradient": scale.css_gradient(),
        "ticks": [f"{t:.3g}" for t in scale.ticks()],
        "kind": scale.kind,
        "describe": scale.describe(),
    }


def _cell(
    exp: Explanation,
    image: Image.Image,
    preprocessing: Preprocessing | None,
    scale: ColorScale,
) -> dict[str, Any]:
    cell: dict[str, Any] = {
        "uri": image_data_uri(exp.render(image, preprocessing=preprocessing, scale=scale)),
        "seconds": exp.seconds,
        "target": exp.target_name(),
        "layer": exp.layer,
        "notes": extra_notes(exp),
        "mask_uri": None,
        "bar": color_bar(scale),
    }
    if preprocessing is not None and "top_mask" in exp.extras:  # LIME's top-k superpixels
        cell["mask_uri"] = image_data_uri(exp.render_mask(image, "top_mask", preprocessing=preprocessing))
        top_k = exp.params.get("top_k")
        cell["mask_label"] = f"top {top_k} superpixels" if top_k else "top superpixels"
    return cell


def demo_report(
    results: Sequence[ImageResult],
    summary: dict[str, Any],
    methods: Sequence[str],
    out: str | os.PathLike[str],
    *,
    title: str = "cnnlens: why the model decided",
    settings: Mapping[str, str] | None = None,
    preprocessing: Preprocessing | None = None,
) -> Path:
    """Write ``index.html``: the images with their predictions, then one row per method (grouped by
    family) of its overlays on every image, the timings and each method's settings.

    Each overlay is drawn on the colour scale chosen by its values (:func:`~cnnlens.viz.choose_scale`:
    sequential over their range when all of one sign, diverging around zero otherwise), stated by a
    colour bar under it; maps of different photos keep their own range, so a weak map is not washed
    out by a strong one beside it. Under each overlay go the method's telling
    scalar results (:data:`EXTRA_NOTES`, e.g. Integrated Gradients' completeness gap); with
    ``preprocessing`` (the model's, to place maps and masks on the photo) LIME's cell also shows its
    top-k superpixels, the rest of the photo darkened.
    """
    from cnnlens.attribution.core.registry import get_method

    images = [
        {
            "stem": r.stem,
            "original": image_data_uri(r.image),
            "predictions": r.predictions,
            "errors": r.errors,
        }
        for r in results
    ]
    totals = dict.fromkeys(methods, 0.0)
    families: dict[str, list[dict[str, Any]]] = {}
    for m in methods:
        cells: list[list[dict[str, Any]]] = []
        for r in results:
            mine = [e for e, _, _ in r.explanations if e.method == m]
            totals[m] += sum(e.seconds for e in mine)
            cells.append([_cell(e, r.image, preprocessing, e.color_scale()) for e in mine])
        kinds = sorted({c["bar"]["kind"] for cs in cells for c in cs})
        try:
            family = get_method(m).family
        except CnnlensError:
            family = "other"
        families.setdefault(family, []).append({"name": m, "cells": cells, "kinds": kinds})
    html = (
        _env()
        .get_template("demo.html.j2")
        .render(
            title=title,
            images=images,
            families=families,
            methods=methods,
            totals=totals,
            summary=summary,
            settings=settings or {},
        )
    )
    path = Path(out) / "index.html"
    return write_text(path, html)
