"""``cnnlens layers``: the layer atlas, attributions at every conv layer or stage of a network."""

from __future__ import annotations

import argparse
from pathlib import Path

from rich.table import Table

from cnnlens.cli.common import add_command, console, model_from_args, split_list
from cnnlens.data.images import load_image
from cnnlens.models.loaded import LoadedModel
from cnnlens.outputs import check_output_folder, output_lock, write_json, write_with
from cnnlens.pipeline import check_targets
from cnnlens.probing.atlas import ATLAS_METHODS, LayerAtlas, layer_atlas
from cnnlens.validation import check_positive_int

HELP = "attributions at every conv layer / stage of the model (the layer atlas)"
DESCRIPTION = (
    "Writes OUT/atlas.png (every layer's map, in network order, with its name and output "
    "shape), OUT/layers/NN_<layer>.npz (one per layer) and OUT/atlas.json. All layers come from one "
    "batched forward and backward pass."
)


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = add_command(sub, "layers", run, image="one", model=True, help=HELP, description=DESCRIPTION)
    p.add_argument("--method", choices=list(ATLAS_METHODS), default="gradxact", help="default: gradxact")
    p.add_argument(
        "--layers",
        action="append",
        help="auto (stages of ResNet-style nets, else every conv), conv, stages, or comma-separated "
        "layer names (default: auto)",
    )
    p.add_argument("-t", "--target", help="class index or name (default: top-1)")
    p.add_argument("--steps", type=int, default=16, help="integration steps for ig (default 16)")
    p.add_argument("--samples", type=int, default=16, help="samples for gradshap (default 16)")
    p.add_argument("--baselines", nargs="+", metavar="IMAGE", help="baseline images for gradshap")
    p.add_argument("--seed", type=int, default=0, help="seed for gradshap (default 0)")
    p.add_argument("--batch-size", type=int, default=32, help="points per forward pass (default 32)")
    p.add_argument("--columns", type=int, default=None, help="panels per row of the figure")
    p.add_argument("-o", "--out", required=True, type=Path, help="output folder")


def method_params(args: argparse.Namespace, model: LoadedModel) -> dict[str, object]:
    """The hyper-parameters of the chosen method from the command line."""
    if args.method == "ig":
        return {"steps": args.steps}
    if args.method == "gradshap":
        params: dict[str, object] = {"n_samples": args.samples, "seed": args.seed}
        if args.baselines:
            params["baselines"] = model.prepare([load_image(b) for b in args.baselines])
        return params
    return {}


def layer_selection(values: list[str] | None) -> str | list[str]:
    names = split_list(values)
    if not names:
        return "auto"
    return names[0] if len(names) == 1 and names[0] in ("auto", "conv", "stages") else names


def print_atlas(atlas: LayerAtlas) -> None:
    table = Table(title=f"{atlas.method} for {atlas.target_name} ({atlas.score:.3f})", title_justify="left")
    for col in ("#", "layer", "type", "output shape", "sum"):
        table.add_column(col, justify="right" if col in ("#", "sum") else "left")
    for i, layer in enumerate(atlas.layers, 1):
        shape = " x ".join(map(str, layer.shape))
        table.add_row(str(i), layer.name, layer.kind, shape, f"{float(layer.channel_totals.sum()):.4g}")
    console.print(table)


def run(args: argparse.Namespace) -> int:
    check_positive_int("--batch-size", args.batch_size)
    if args.columns is not None:
        check_positive_int("--columns", args.columns)
    check_output_folder(args.out)
    image = load_image(args.image)
    model = model_from_args(args)
    target = check_targets(model, [args.target])[0] if args.target is not None else None
    x = model.prepare(image)
    with console.status(f"{args.method} at every layer"):
        atlas = layer_atlas(
            model,
            x,
            target,
            method=args.method,
            layers=layer_selection(args.layers),
            batch_size=args.batch_size,
            **method_params(args, model),
        )
    from cnnlens.probing.figures import atlas_figure

    fig = atlas_figure(atlas, model.preprocessing.view(image), columns=args.columns)
    with output_lock(args.out) as out:
        atlas.save(out / "layers")
        write_with(out / "atlas.png", lambda f: fig.savefig(f, format="png", dpi=110))
        summary = {"image": str(args.image), "model": model.name, **atlas.summary()}
        write_json(out / "atlas.json", summary, indent=2)
    print_atlas(atlas)
    console.print(f"wrote {args.out / 'atlas.png'}, {len(atlas.layers)} layer files in {args.out / 'layers'}")
    return 0
