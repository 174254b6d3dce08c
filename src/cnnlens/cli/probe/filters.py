"""``cnnlens probe filters``: the first convolution's weights as a grid of pictures."""

from __future__ import annotations

import argparse

from rich.table import Table as RichTable

from cnnlens.cli.common import add_command, console, model_from_args
from cnnlens.cli.probe.common import ToolOutput, add_out_argument
from cnnlens.probing.filters import first_layer_filters
from cnnlens.report.sections import Figure, Section, Table

HELP = "the first conv layer's filters as pictures"
DESCRIPTION = (
    "Writes OUT/filters/filters.png (each filter scaled to [0, 1] on its own), filters.json (shape, "
    "per-filter L2 norm, colour share) and a section of OUT/index.html. Only the first layer's "
    "weights are images; for a deeper --layer it says so and exits 2 (use `probe patches` or "
    "`probe visualize`)."
)


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = add_command(sub, "filters", run, model=True, help=HELP, description=DESCRIPTION)
    p.add_argument("--layer", help="a conv layer taking the image (default: the first Conv2d)")
    p.add_argument("--columns", type=int, help="filters per row (default: about square, at most 16)")
    add_out_argument(p)


def run(args: argparse.Namespace) -> int:
    out = ToolOutput(args.out, "filters")
    model = model_from_args(args)
    filters = first_layer_filters(model, args.layer)
    from cnnlens.probing.plots import filters_figure

    numbers = {"model": model.name, **filters.to_dict()}
    norms = numbers["l2_norm"]
    colour = numbers["colour_share"]
    out.json("filters.json", numbers)
    name = out.figure("filters.png", filters_figure(filters, columns=args.columns))
    shape = " x ".join(map(str, filters.weight.shape))
    order = sorted(range(len(norms)), key=lambda i: -norms[i])
    out.section(
        Section(
            key="filters",
            title=f"First-layer filters: {filters.layer}",
            text=f"{model.name}: {shape} weights, each filter scaled to [0, 1] on its own. Trained "
            "first layers look like oriented edges, colour blobs and Gabor-like stripes; deeper "
            "layers' weights are not images (see top patches).",
            figures=[Figure(name, f"{filters.layer} filters of {model.name}")],
            tables=[
                Table(
                    ["filter", "L2 norm", "colour share"],
                    [[i, norms[i], colour[i]] for i in order[:8]],
                    "strongest filters (colour share: weight mass on the strongest input channel; "
                    "1/3 = grey)",
                )
            ],
            order=10,
        )
    )
    table = RichTable(title=f"{filters.layer} of {model.name}: {shape}", title_justify="left")
    for col in ("filter", "L2 norm", "colour share"):
        table.add_column(col, justify="right")
    for i in order[:8]:
        table.add_row(str(i), f"{norms[i]:.3f}", f"{colour[i]:.2f}")
    console.print(table)
    return 0
