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
from cnnlens.outputs import write_text
from cnnlens.pipeline import ImageResult


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
    "completeness_gap": ("completeness gap", "{:.3g}"),  # Integrated Gradients
    "sum_gap": ("Shapley sum gap", "{:.2g}"),  # KernelSHAP
    "r2": ("surrogate R\u00b2", "{:.2f}"),  # LIME
}


def extra_notes(exp: Explanation) -> list[str]:
    """Short lines for the scalar extras of :data:`EXTRA_NOTES` that ``exp`` carries."""
    small = exp.small_extras()
    return [
        f"{label} {fmt.format(small[name])}"
        for name, (label, fmt) in EXTRA_NOTES.items()
        if isinstance(small.get(name), (int, float))
    ]


def _cell(
    exp: Explanation, png: Path, image: Image.Image, preprocessing: Preprocessing | None
) -> dict[str, Any]:
    cell: dict[str, Any] = {
        "uri": image_data_uri(Image.open(png)),
        "seconds": exp.seconds,
        "target": exp.target_name(),
        "layer": exp.layer,
        "notes": extra_notes(exp),
        "mask_uri": None,
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
    """Write ``index.html``: predictions, an image x method grid of overlays, the timings and each
    method's settings.

    Under each overlay go the method's telling scalar results (:data:`EXTRA_NOTES`, e.g. Integrated
    Gradients' completeness gap); with ``preprocessing`` (the model's, to place masks on the photo)
    LIME's cell also shows its top-k superpixels, the rest of the photo darkened.
    """
    rows: list[dict[str, Any]] = []
    totals = dict.fromkeys(methods, 0.0)
    for r in results:
        by_method = {e.method: (e, png) for e, png, _ in r.explanations}
        cells: list[dict[str, Any] | None] = []
        for m in methods:
            if m in by_method:
                e, png = by_method[m]
                totals[m] += e.seconds
                cells.append(_cell(e, png, r.image, preprocessing))
            else:
                cells.append(None)
        rows.append(
            {
                "stem": r.stem,
                "original": image_data_uri(r.image),
                "predictions": r.predictions,
                "cells": cells,
                "errors": r.errors,
            }
        )
    html = (
        _env()
        .get_template("demo.html.j2")
        .render(
            title=title, rows=rows, methods=methods, totals=totals, summary=summary, settings=settings or {}
        )
    )
    path = Path(out) / "index.html"
    return write_text(path, html)
