"""The self-contained HTML page of ``cnnlens benchmark``: the method x metric table (best per column
highlighted, directions shown) and the mean curves as embedded PNGs."""

from __future__ import annotations

import base64
import io
import math
import os
from pathlib import Path
from typing import Any

from cnnlens.outputs import write_text
from cnnlens.report.html import _env

CURVE_AXES = {
    "deletion": ("share of pixels removed", "target probability"),
    "insertion": ("share of pixels inserted", "target probability"),
    "randomisation": ("randomisation stage (top layers first)", "Spearman correlation"),
    "randomisation_ssim": ("randomisation stage (top layers first)", "SSIM"),
}


def format_cell(mean: float, half: float) -> str:
    """``mean ± half`` with three decimals (``n/a`` when undefined)."""
    if math.isnan(mean):
        return "n/a"
    return f"{mean:.3f}" if math.isnan(half) else f"{mean:.3f} ± {half:.3f}"


def best_rows(summary: dict[str, Any]) -> dict[str, set[str]]:
    """For each metric, the non-reference rows with the best mean in the metric's direction (ties all)."""
    best: dict[str, set[str]] = {}
    for metric in summary["metrics"]:
        name, sign = metric["name"], 1.0 if metric["higher_is_better"] else -1.0
        scored = {
            row["row"]: sign * row["metrics"][name]["mean"]
            for row in summary["table"]
            if not row["reference"] and not math.isnan(row["metrics"][name]["mean"])
        }
        if scored:
            top = max(scored.values())
            best[name] = {row for row, value in scored.items() if value == top}
    return best


def curve_png(name: str, curves: dict[str, list[list[float]]]) -> str:
    """One metric's mean curves (one line per row) as a PNG data URI."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=(5, 3.4), dpi=90)
    ax = fig.subplots()
    for row, (xs, ys) in curves.items():
        ax.plot(xs, ys, label=row, linestyle="--" if row.startswith("reference") else "-")
    xlabel, ylabel = CURVE_AXES.get(name, ("step", "value"))
    ax.set(title=name, xlabel=xlabel, ylabel=ylabel)
    ax.legend(fontsize=7)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode("ascii")


def benchmark_report(
    summary: dict[str, Any], out: str | os.PathLike[str], *, title: str = "cnnlens benchmark"
) -> Path:
    """Write ``benchmark.html`` from a :func:`cnnlens.evaluation.benchmark.summarize` summary."""
    best = best_rows(summary)
    insensitive = {m["name"] for m in summary["methods"] if m.get("class_sensitive") is False}
    rows = []
    for row in summary["table"]:
        cells = []
        for metric in summary["metrics"]:
            cell = row["metrics"][metric["name"]]
            cells.append(
                {
                    "text": format_cell(cell["mean"], cell["ci95"]),
                    "n": cell["n"],
                    "best": row["row"] in best.get(metric["name"], set()),
                    "flag": bool(cell.get("flag")),
                }
            )
        note = "class-insensitive by nature" if row["row"] in insensitive else ""
        rows.append({"name": row["row"], "reference": row["reference"], "cells": cells, "note": note})
    curves = [(name, curve_png(name, c)) for name, c in summary["curves"].items()]
    html = (
        _env()
        .get_template("benchmark.html.j2")
        .render(title=title, summary=summary, metrics=summary["metrics"], rows=rows, curves=curves)
    )
    path = Path(out) / "benchmark.html"
    return write_text(path, html)
