"""``cnnlens probe embed``: a 2-D map of a layer's features coloured by class, and the confusable pairs."""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch
import torch.nn.functional as F

from cnnlens.cli.common import add_command, console, model_from_args
from cnnlens.cli.probe.common import (
    ToolOutput,
    add_data_arguments,
    add_out_argument,
    check_layer,
    data_pass,
    pictures,
    png_data_uri,
    read_samples,
)
from cnnlens.models.loaded import LoadedModel
from cnnlens.probing.embedding import METHODS, NEIGHBOURS, embed_2d, separation
from cnnlens.probing.features import POOLS, extract_features
from cnnlens.report.scatter import scatter_html
from cnnlens.report.sections import Figure, Section, Table
from cnnlens.validation import check_int_at_least

HELP = "2-D map (t-SNE, UMAP, PCA) of a layer's features, coloured by class"
DESCRIPTION = (
    "One pass over DATA collecting --layer's global-average-pooled activations, then a 2-D map "
    "(t-SNE by default; t-SNE and UMAP run on the first 50 principal components), k-NN accuracies, "
    "the silhouette of the map and the most confusable class pairs (k-NN overlap in feature space). "
    "Writes OUT/embed/embed.png, embed.json, coords.npz and a section of OUT/index.html with an "
    "interactive scatter (thumbnails on hover)."
)

THUMB = 32


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = add_command(sub, "embed", run, model=True, help=HELP, description=DESCRIPTION)
    add_data_arguments(p)
    p.add_argument("--layer", required=True, help="dotted layer name (a conv block or a linear layer)")
    p.add_argument("--method", choices=METHODS, default="tsne", help="default tsne")
    p.add_argument("--pool", choices=POOLS, default="avg", help="avg: global average pool (default); flatten")
    p.add_argument("--pairs", type=int, default=5, help="confusable class pairs listed (default 5)")
    p.add_argument(
        "--thumbnails", type=int, default=2000, help="points with a hover thumbnail (default 2000)"
    )
    p.add_argument("--seed", type=int, default=0, help="random state of the map (default 0)")
    add_out_argument(p)


def thumbnailer(model: LoadedModel) -> object:
    def make(x: torch.Tensor) -> torch.Tensor:
        small = F.adaptive_avg_pool2d(x.float().cpu(), (min(THUMB, x.shape[-2]), min(THUMB, x.shape[-1])))
        return torch.from_numpy(pictures(model, small)).movedim(-1, 1)

    return make


def run(args: argparse.Namespace) -> int:
    check_int_at_least("--pairs", args.pairs, 1)
    check_int_at_least("--thumbnails", args.thumbnails, 0)
    out = ToolOutput(args.out, "embed")
    data = read_samples(args)
    model = model_from_args(args)
    layer = check_layer(model, args.layer, maps=False)
    with data_pass(model, data, args, f"features of {layer}") as (batches, progress):
        feats = extract_features(
            model,
            batches(),
            layer,
            pool=args.pool,
            thumbnail=thumbnailer(model),  # type: ignore[arg-type]
            thumbnails=args.thumbnails,
            progress=progress,
        )
    x = feats.values.numpy()
    y = feats.labels.numpy()
    started = time.perf_counter()
    with console.status(f"{args.method} of {len(x)} x {x.shape[1]} features"):
        coords = embed_2d(x, args.method, seed=args.seed)
    seconds = time.perf_counter() - started
    names = data.class_names
    labelled = (y >= 0).all() and len(np.unique(y)) >= 2
    sep = separation(x, coords, y, top=args.pairs, seed=args.seed) if labelled else None
    from cnnlens.probing.plots import embedding_figure

    rel = data.relative
    files = [rel(data.samples[int(i)].path) for i in feats.indices]
    numbers = {
        "model": model.name,
        "layer": layer,
        "method": args.method,
        "pool": args.pool,
        "images": len(x),
        "features": int(x.shape[1]),
        "seconds": seconds,
        "failed": [m for _, m in feats.failed],
        **(sep.to_dict(names) if sep else {}),
    }
    title = f"{args.method} of {layer} ({len(x)} images, {x.shape[1]} features)"
    out.json("embed.json", numbers)
    from cnnlens.outputs import write_with

    write_with(
        out.folder / "coords.npz",
        lambda f: np.savez(f, coords=coords, labels=y, indices=feats.indices.numpy()),
    )
    fig = out.figure("embed.png", embedding_figure(coords, y, names, title))
    thumbs = feats.thumbnails
    uris = [png_data_uri(t.movedim(0, -1).numpy()) for t in thumbs] if thumbs is not None else []
    uris += [None] * (len(x) - len(uris))  # type: ignore[list-item]
    captions = [f"{names[c] if 0 <= c < len(names) else ''} {f}" for c, f in zip(y, files)]
    tables = []
    text = f"{len(x)} images of {args.data} through {model.name}; {args.pool}-pooled {layer} activations"
    if sep:
        tables.append(
            Table(
                ["class a", "class b", "k-NN overlap"],
                [[names[a], names[b], o] for a, b, o in sep.pairs],
                f"most confusable class pairs: share of the {NEIGHBOURS} nearest neighbours (in feature "
                "space) of the images of a and b that belong to the other class",
            )
        )
        text += (
            f". k-NN accuracy ({NEIGHBOURS} neighbours, leave-one-out): {sep.knn_features:.3f} in feature "
            f"space, {sep.knn_map:.3f} on the map; silhouette of the map {sep.silhouette_map:.3f}."
        )
    out.section(
        Section(
            key="embed",
            title=f"Feature map ({args.method}) of {layer}",
            text=text + "\n\nHover a point to see its image.",
            figures=[Figure(fig, title)],
            tables=tables,
            html=scatter_html("embed", coords, [int(c) for c in y], names, uris, captions=captions),
            order=50,
        )
    )
    console.print(f"{title}: {seconds:.1f} s")
    if sep:
        console.print(
            f"k-NN accuracy: features {sep.knn_features:.3f}, map {sep.knn_map:.3f}; "
            f"silhouette {sep.silhouette_map:.3f}"
        )
        for a, b, o in sep.pairs:
            console.print(f"  {names[a]} / {names[b]}: overlap {o:.3f}")
    return 0
