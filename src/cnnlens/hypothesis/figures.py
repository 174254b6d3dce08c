"""Figures of the hypothesis experiments: PNG bytes, drawn with matplotlib's Agg backend."""

from __future__ import annotations

import io
import math
from collections.abc import Sequence

import numpy as np

from cnnlens.hypothesis.experiments import ExperimentResult
from cnnlens.hypothesis.shape_bias import ShapeBiasResult


def _png(fig: object) -> bytes:
    import matplotlib.pyplot as plt

    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=90, bbox_inches="tight")  # type: ignore[attr-defined]
    plt.close(fig)  # type: ignore[arg-type]
    return buf.getvalue()


def montage(images: Sequence[np.ndarray], titles: Sequence[str], columns: int = 5, cell: int = 176) -> bytes:
    """Images in a grid (each scaled to ``cell`` pixels), each with its title's lines under it
    (drawn with Pillow: quicker than a matplotlib figure per experiment)."""
    from PIL import Image, ImageDraw, ImageFont

    font = ImageFont.load_default()
    lines = max((t.count("\n") + 1 for t in titles), default=1)
    text_h = 13 * lines + 4
    cols = max(1, min(columns, len(images)))
    rows = max(1, math.ceil(len(images) / cols))
    sheet = Image.new("RGB", (cols * (cell + 6), rows * (cell + text_h + 6)), "white")
    draw = ImageDraw.Draw(sheet)
    chars = cell // 6  # the default bitmap font is 6 pixels wide
    for k, (im, title) in enumerate(zip(images, titles)):
        x, y = (k % cols) * (cell + 6) + 3, (k // cols) * (cell + text_h + 6) + 3
        sheet.paste(Image.fromarray(im).resize((cell, cell), Image.Resampling.BILINEAR), (x, y))
        for i, line in enumerate(title.split("\n")):
            draw.text((x, y + cell + 2 + 13 * i), line[:chars], fill="black", font=font)
    buf = io.BytesIO()
    sheet.save(buf, format="PNG", optimize=False)
    return buf.getvalue()


def experiment_figure(result: ExperimentResult, view: np.ndarray, limit: int = 20) -> bytes:
    """The unchanged view and up to ``limit`` variants (shared evenly between the groups, e.g. the
    grid sizes of a shuffle), titled with the top-1 and the target's probability."""
    t = result.target
    groups = result.groups()
    per_group = max(1, limit // len(groups)) if groups else 0
    count: dict[str, int] = {}
    shown = []
    for k, v in enumerate(result.variants):
        count[v.group] = count.get(v.group, 0) + 1
        if count[v.group] <= per_group:
            shown.append(k)
    titles = [f"original\n{t.name} {100 * t.prob:.1f}%\n"]
    images = [view]
    for k in shown:
        v = result.variants[k]
        titles.append(
            f"{v.label}\n{v.top[0].name} {100 * v.top[0].prob:.0f}%\ntarget {100 * v.target_prob:.1f}%"
        )
        images.append(result.images[k])
    if result.experiment == "texture":  # the texture alone, after the variants
        tex = result.summary["texture_class"]
        images.append(result.images[-1])
        titles.append(f"texture alone\n{tex['name']} {100 * tex['prob']:.0f}%\n")
    return montage(images, titles)


def shuffle_plot(result: ExperimentResult) -> bytes:
    """Target confidence of every shuffle per grid size (dots), with the unshuffled value as a line."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    groups = result.groups()
    fig, ax = plt.subplots(figsize=(1.6 + 1.3 * len(groups), 3.2))
    for k, vs in enumerate(groups.values()):
        y = [v.target_prob for v in vs]
        x = k + np.linspace(-0.2, 0.2, len(y))
        ax.scatter(x, y, s=12, c=["tab:green" if v.target_top1 else "tab:red" for v in vs])
    ax.axhline(result.target.prob, color="grey", ls="--", lw=1, label="unshuffled")
    ax.set_xticks(range(len(groups)), [g.replace("grid ", "") + "x" + g.replace("grid ", "") for g in groups])
    ax.set_ylabel(f"p({result.target.name})")
    ax.set_ylim(0, 1)
    ax.set_title("green: still top-1", fontsize=9)
    ax.legend(fontsize=8)
    return _png(fig)


def shape_bias_figure(result: ShapeBiasResult, columns: int = 6) -> bytes:
    """The first kept cue-conflict images, titled with their shape / texture class and the decision."""
    titles = [
        f"shape: {i.shape_class}\ntexture: {i.texture_class}\n-> {i.decision} ({i.follows})"
        for i in result.items[: len(result.images)]
    ]
    return montage(result.images, titles, columns)
