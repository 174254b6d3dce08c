"""An interactive scatter plot for a page section: inline SVG plus a few lines of script that show a
point's thumbnail and label on hover. Self-contained (thumbnails are data URIs), no network."""

from __future__ import annotations

import html
import json
from collections.abc import Sequence

import numpy as np

#: Ten distinguishable colours (matplotlib's tab10), cycled for more classes.
COLOURS = (
    "#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd",
    "#8c564b", "#e377c2", "#7f7f7f", "#bcbd22", "#17becf",
)  # fmt: skip


def scatter_html(
    key: str,
    coords: np.ndarray,
    labels: Sequence[int],
    names: Sequence[str],
    thumbnails: Sequence[str | None],
    *,
    size: int = 640,
    captions: Sequence[str] | None = None,
) -> str:
    """An SVG scatter of ``coords`` coloured by class; hovering a point shows its thumbnail.

    Args:
        key: A unique id prefix on the page (the section key).
        coords: ``(N, 2)`` points.
        labels: Class index per point (``-1``: unlabelled, grey).
        names: Class names.
        thumbnails: Per point a ``data:`` URI (or ``None``: no thumbnail).
        size: Side of the plot in pixels.
        captions: Per point a caption (default: its class name).
    """
    xy = np.asarray(coords, dtype=np.float64)
    lo, hi = xy.min(axis=0), xy.max(axis=0)
    span = np.where(hi > lo, hi - lo, 1.0)
    pad = 10
    pts = pad + (xy - lo) / span * (size - 2 * pad)
    uid = "".join(ch if ch.isalnum() else "_" for ch in key)

    def name(c: int) -> str:
        return names[c] if 0 <= c < len(names) else "unlabelled"

    circles = []
    for i, ((x, y), c) in enumerate(zip(pts, labels)):
        colour = COLOURS[c % len(COLOURS)] if c >= 0 else "#999999"
        circles.append(f'<circle cx="{x:.1f}" cy="{size - y:.1f}" r="3" fill="{colour}" data-i="{i}"/>')
    texts = [html.escape(c) for c in (captions or [name(int(c)) for c in labels])]
    legend = " ".join(
        f'<span style="color:{COLOURS[c % len(COLOURS)]}">&#9679; {html.escape(name(c))}</span>'
        for c in sorted({int(c) for c in labels if c >= 0})
    )
    data = json.dumps({"t": list(thumbnails), "c": texts}).replace("</", "<\\/")
    tip = (
        "position:absolute;display:none;pointer-events:none;background:#fff;border:1px solid #888;padding:3px"
    )
    return (
        f'<div style="position:relative;display:inline-block">'
        f'<svg id="{uid}-svg" width="{size}" height="{size}" style="border:1px solid #ddd;background:#fff">'
        f'{"".join(circles)}</svg><div id="{uid}-tip" style="{tip};font-size:12px"></div>'
        f'<p style="font-size:0.8rem;max-width:{size}px">{legend}</p></div>\n'
        f"<script>{SCRIPT.replace('UID', uid).replace('DATA', data)}</script>"
    )


#: Hover: show the point's thumbnail and caption next to it (``UID`` and ``DATA`` are filled in).
SCRIPT = """(function(){var d=DATA;
var s=document.getElementById("UID-svg"),t=document.getElementById("UID-tip");
s.addEventListener("mouseover",function(e){var i=e.target.getAttribute("data-i");if(i===null)return;
var u=d.t[i],img='<img src="'+u+'" width="64" height="64" style="image-rendering:pixelated;display:block">';
t.innerHTML=(u?img:"")+d.c[i];
t.style.left=(+e.target.getAttribute("cx")+8)+"px";t.style.top=(+e.target.getAttribute("cy")+8)+"px";
t.style.display="block";});
s.addEventListener("mouseout",function(){t.style.display="none";});})();"""
