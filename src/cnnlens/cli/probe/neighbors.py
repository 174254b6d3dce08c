"""``cnnlens probe neighbors``: the dataset images nearest to a query in feature space and in pixel space."""

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
    pictures,
    read_samples,
)
from cnnlens.data.images import load_image
from cnnlens.probing.features import METRICS, PIXEL_SIZE, POOLS, nearest_neighbours
from cnnlens.report.sections import Figure, Section, Table
from cnnlens.validation import check_positive_int

HELP = "nearest dataset images to a query in a layer's feature space, vs pixel space"
DESCRIPTION = (
    "One pass over DATA with a running top-k (no features kept): the --k images whose --layer "
    "activations (global-average-pooled, or flattened with --pool flatten) are nearest to the query's "
    f"(cosine similarity by default, or --metric l2), and the --k nearest by L2 distance of the "
    f"preprocessed pixels (at most {PIXEL_SIZE} px a side). Writes OUT/neighbors/neighbors.png, "
    "neighbors.json and a section of OUT/index.html."
)


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = add_command(sub, "neighbors", run, model=True, help=HELP, description=DESCRIPTION)
    add_data_arguments(p)
    p.add_argument("--query", required=True, help="the query image file")
    p.add_argument("--layer", required=True, help="dotted layer name (a conv block or a linear layer)")
    p.add_argument("--k", type=int, default=8, help="neighbours (default 8)")
    p.add_argument(
        "--metric", choices=METRICS, default="cosine", help="feature-space metric (default cosine)"
    )
    p.add_argument("--pool", choices=POOLS, default="avg", help="avg: global average pool (default); flatten")
    add_out_argument(p)


def run(args: argparse.Namespace) -> int:
    check_positive_int("--k", args.k)
    out = ToolOutput(args.out, "neighbors")
    query_image = load_image(args.query)
    data = read_samples(args)
    model = model_from_args(args)
    layer = check_layer(model, args.layer, maps=False)
    query = model.prepare(query_image)
    with data_pass(model, data, args, f"neighbours in {layer}") as (batches, progress):
        found = nearest_neighbours(
            model, query, batches(), layer, k=args.k, metric=args.metric, pool=args.pool, progress=progress
        )
    wanted = sorted({i for i, _ in found.feature + found.pixel})
    seen = {}
    for batch in fetch_images(model, data, args)(wanted):
        for n, x in zip(batch.indices.tolist(), batch.inputs):
            seen[n] = pictures(model, x)
    names = data.class_names

    def label(i: int) -> str:
        c = found.labels[i]
        return names[c] if 0 <= c < len(names) else ""

    score = "cos" if args.metric == "cosine" else "d"
    rows = [
        (
            f"{layer} ({args.metric})",
            [(seen[i], f"{label(i)} {score} {s:.3f}") for i, s in found.feature if i in seen],
        ),
        (
            f"pixels (l2, {PIXEL_SIZE} px)",
            [(seen[i], f"{label(i)} d {s:.1f}") for i, s in found.pixel if i in seen],
        ),
    ]
    from cnnlens.probing.plots import neighbours_figure

    rel = data.relative
    numbers = {"model": model.name, "query": str(args.query), **found.to_dict()}
    for entry in numbers["feature"] + numbers["pixel"]:
        entry["file"] = rel(data.samples[entry["index"]].path)
    out.json("neighbors.json", numbers)
    fig = out.figure("neighbors.png", neighbours_figure(pictures(model, query[0]), rows))
    table = [
        [r + 1, rel(data.samples[i].path), label(i), s, rel(data.samples[j].path), label(j), d]
        for r, ((i, s), (j, d)) in enumerate(zip(found.feature, found.pixel))
    ]
    out.section(
        Section(
            key="neighbors",
            title=f"Nearest neighbours in {layer} vs pixel space",
            text=f"Query {args.query}; {found.images_seen} images of {args.data} through {model.name}. "
            f"Feature space: {args.pool}-pooled {layer} activations, {args.metric}. Pixel space: L2 on the "
            f"preprocessed image at {PIXEL_SIZE} px.",
            figures=[Figure(fig, "top row: feature-space neighbours; bottom row: pixel-space neighbours")],
            tables=[Table(["rank", "feature nn", "class", args.metric, "pixel nn", "class", "l2"], table)],
            order=40,
        )
    )
    console.print(
        f"feature space ({layer}, {args.metric}): "
        + ", ".join(f"{label(i) or i} {s:.3f}" for i, s in found.feature)
    )
    console.print("pixel space (l2): " + ", ".join(f"{label(i) or i} {s:.1f}" for i, s in found.pixel))
    return 0
