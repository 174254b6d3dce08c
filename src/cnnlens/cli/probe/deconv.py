"""``cnnlens probe deconv``: Zeiler & Fergus's projection of a unit's top activation to pixels."""

from __future__ import annotations

import argparse

from cnnlens.cli.common import add_command, console, model_from_args
from cnnlens.cli.probe._units import add_out, feature_layer, parse_units, publish, save_png
from cnnlens.data.images import load_image
from cnnlens.outputs import check_output_folder, output_folder, subfolder, write_json
from cnnlens.probing.deconv import deconv_projection
from cnnlens.probing.unit_figures import deconv_figure
from cnnlens.report.sections import Figure, Section

HELP = "deconvnet: project a unit's strongest activation in an image back to pixels"
DESCRIPTION = (
    "Zeiler & Fergus (2014): the unit's largest activation in IMAGE is kept, every other activation "
    "of the layer zeroed, and the signal sent back to the pixels through the deconvnet (transposed "
    "convolutions, max-pooling switches, rectified signal at every ReLU). Needs a model with ReLU "
    "modules (e.g. tinycnn, resnet18, vgg11; lite0 has ReLU6). Writes OUT/deconv/deconv_<unit>.png "
    "(image, projection, patch), deconv.json and a section of OUT/index.html."
)


def add_parser(tools: argparse._SubParsersAction) -> None:
    p = add_command(tools, "deconv", run, image="one", model=True, help=HELP, description=DESCRIPTION)
    p.add_argument("--layer", required=True, help="dotted layer name (see `cnnlens layers`)")
    p.add_argument("--unit", required=True, help="unit(s) of the layer: 3, 3,7 or 0-5")
    add_out(p)


def run(args: argparse.Namespace) -> int:
    check_output_folder(args.out)
    model = model_from_args(args)
    name, units = feature_layer(model, args.layer)
    chosen = parse_units(args.unit, units, name)
    image = load_image(args.image)
    view = model.preprocessing.view(image)
    x = model.preprocessing(image)[None]
    projections = [deconv_projection(model, x, name, u) for u in chosen]
    folder = subfolder(output_folder(args.out), "deconv")
    figures = []
    for p in projections:
        file = f"deconv_{p.unit}.png"
        save_png(folder, file, deconv_figure(view, p), dpi=110)
        figures.append(Figure(file, f"{name} unit {p.unit}: activation {p.activation:.3g} at {p.position}"))
        console.print(
            f"{name} unit {p.unit}: peak {p.activation:.3g} at {p.position} of {p.feature_size}, projected "
            f"onto pixels {p.box} (left, top, right, bottom)"
        )
    write_json(
        folder / "deconv.json",
        {"model": model.name, "image": str(args.image), "projections": [p.to_dict() for p in projections]},
    )
    page = publish(
        args.out,
        Section(
            key="deconv",
            title=f"Deconvnet projections: {name}",
            text=(
                f"Each unit's strongest activation in {args.image} projected back to pixels with the "
                "deconvnet rule (Zeiler & Fergus 2014); grey is zero, the box is where the projection "
                "reaches."
            ),
            figures=figures,
            order=80,
        ),
    )
    console.print(f"wrote {folder / 'deconv.json'}, {len(figures)} figure(s) and {page}")
    return 0
