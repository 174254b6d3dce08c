"""``cnnlens probe patches``: the dataset patches each unit of a layer responds to most."""

from __future__ import annotations

import argparse

from cnnlens.cli.common import add_command, console, model_from_args
from cnnlens.cli.probe.common import (
    ToolOutput,
    add_data_arguments,
    add_out_argument,
    check_layer,
    data_pass,
    fetch_images,
    layer_channels,
    parse_units,
    pictures,
    read_samples,
)
from cnnlens.errors import InputError
from cnnlens.probing.patches import PATCH_MASS
from cnnlens.probing.stream import check_units
from cnnlens.probing.top_patches import crop_patches, top_activations
from cnnlens.report.sections import Figure, Section, Table
from cnnlens.validation import check_positive_int

HELP = "maximally activating dataset patches per unit of a layer"
DESCRIPTION = (
    "One pass over DATA for all units of --layer (a running top-k per unit: memory does not grow with "
    "the number of images), then the winners' patches: the square around the centroid of the unit's "
    "input gradient holding --mass of it, inside its receptive field (the gradient's support). Writes "
    "OUT/patches/patches.png, patches.json and a section of OUT/index.html."
)


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = add_command(sub, "patches", run, model=True, help=HELP, description=DESCRIPTION)
    add_data_arguments(p)
    p.add_argument("--layer", required=True, help="dotted layer name (`cnnlens layers` lists them)")
    p.add_argument("--units", action="append", help="channels, e.g. 0,3,7 or 2-5 (default: all tracked)")
    p.add_argument("--top", type=int, default=9, help="patches per unit (default 9)")
    p.add_argument(
        "--show", type=int, default=16, help="units shown without --units: the strongest (default 16)"
    )
    p.add_argument(
        "--mass", type=float, default=PATCH_MASS, help=f"gradient share in a patch (default {PATCH_MASS})"
    )
    add_out_argument(p)


def run(args: argparse.Namespace) -> int:
    check_positive_int("--top", args.top)
    check_positive_int("--show", args.show)
    if not 0 < args.mass <= 1:
        raise InputError(f"--mass is a share of the gradient in (0, 1], got {args.mass}")
    units = parse_units(args.units)
    out = ToolOutput(args.out, "patches")
    data = read_samples(args)
    model = model_from_args(args)
    layer = check_layer(model, args.layer)
    check_units(units, layer_channels(model, layer), layer)  # before the pass, not after it
    with data_pass(model, data, args, f"top activations of {layer}") as (batches, progress):
        found = top_activations(model, batches(), layer, units=units, k=args.top, progress=progress)
    shown = units if units is not None else found.strongest(args.show)
    with console.status(f"patches of {len(shown)} units"):
        result = crop_patches(
            model, found, shown, fetch_images(model, data, args), lambda x: pictures(model, x), mass=args.mass
        )
    from cnnlens.probing.plots import patches_figure

    rel = data.relative
    numbers = {
        "model": model.name,
        "layer": layer,
        "images": found.images_seen,
        "failed": [m for _, m in found.failed],
        "top_k_bytes": found.top.nbytes,
        "box": f"square around the centroid of the unit's input-gradient magnitude holding {args.mass} of it",
        "units": [
            {**u.to_dict(), "files": [rel(data.samples[p.image].path) for p in u.patches]} for u in result
        ],
        "tracked": {
            str(c): [{"image": i, "value": v} for v, i, _ in found.top.rows(r)]
            for r, c in enumerate(found.units)
        },
    }
    out.json("patches.json", numbers)
    fig = out.figure("patches.png", patches_figure(result, layer))
    rows = [
        [
            u.channel,
            u.patches[0].activation if u.patches else None,
            rel(data.samples[u.patches[0].image].path) if u.patches else "",
        ]
        for u in result
    ]
    out.section(
        Section(
            key="patches",
            title=f"Top dataset patches of {layer}",
            text=f"{found.images_seen} images of {args.data} through {model.name}, one pass for the "
            f"{len(found.units)} units of {layer}; per unit the {args.top} images where its peak is "
            "highest, cropped to the patch its input gradient concentrates on (inside its receptive field).",
            figures=[Figure(fig, "one row per unit, strongest patch first (peak activation above each)")],
            tables=[Table(["unit", "top activation", "top image"], rows)],
            order=30,
        )
    )
    console.print(
        f"{found.images_seen} images, {len(found.units)} units tracked in {found.top.nbytes} bytes; "
        f"units shown: {', '.join(map(str, shown))}"
    )
    return 0
