"""``cnnlens probe activations``: the strongest channels' activation maps of one image, per layer."""

from __future__ import annotations

import argparse

from cnnlens.cli.common import add_command, console, model_from_args, split_list
from cnnlens.cli.probe.common import ToolOutput, add_out_argument, check_layer, pictures
from cnnlens.data.images import load_image
from cnnlens.errors import InputError
from cnnlens.probing.filters import strongest_activations
from cnnlens.report.sections import Figure, Section, Table
from cnnlens.validation import check_positive_int

HELP = "the strongest channels' activation maps of one image, per layer"
DESCRIPTION = (
    "For each --layers layer, the --top channels with the largest mean activation on IMAGE and their "
    "maps. Writes OUT/activations/activations.png, activations.json and a section of OUT/index.html."
)


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = add_command(sub, "activations", run, image="one", model=True, help=HELP, description=DESCRIPTION)
    p.add_argument("--layers", action="append", required=True, help="comma-separated layer names")
    p.add_argument("--top", type=int, default=8, help="channels per layer (default 8)")
    add_out_argument(p)


def run(args: argparse.Namespace) -> int:
    check_positive_int("--top", args.top)
    layers = split_list(args.layers)
    if not layers:
        raise InputError("--layers: give at least one layer name (`cnnlens layers` lists them)")
    out = ToolOutput(args.out, "activations")
    image = load_image(args.image)
    model = model_from_args(args)
    names = [check_layer(model, layer) for layer in layers]
    x = model.prepare(image)
    found = strongest_activations(model, x, names, top=args.top)
    from cnnlens.probing.plots import activations_figure

    out.json(
        "activations.json",
        {"image": str(args.image), "model": model.name, "layers": [a.to_dict() for a in found]},
    )
    fig = out.figure("activations.png", activations_figure(pictures(model, x[0]), found))
    rows = [
        [a.layer, " x ".join(map(str, a.shape)), ", ".join(map(str, a.channels)), a.means[0]] for a in found
    ]
    out.section(
        Section(
            key="activations",
            title="Activation maps of one image",
            text=f"{args.image} through {model.name}: per layer the {args.top} channels with the largest "
            "mean activation, strongest first.",
            figures=[Figure(fig, "one row per layer: the image, then the strongest channels' maps")],
            tables=[Table(["layer", "shape", "strongest channels", "top mean"], rows)],
            order=20,
        )
    )
    for a in found:
        console.print(
            f"{a.layer} {tuple(a.shape)}: channels {a.channels} (mean {a.means[0]:.3g} .. {a.means[-1]:.3g})"
        )
    return 0
