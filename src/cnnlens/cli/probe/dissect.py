"""``cnnlens probe dissect``: network dissection of one layer (Bau et al. 2017)."""

from __future__ import annotations

import argparse

from cnnlens.cli.common import add_command, console, model_from_args, progress_bar
from cnnlens.cli.probe._units import add_out, feature_layer, publish, save_png
from cnnlens.data.concepts import ConceptSet, label_concepts, read_concepts
from cnnlens.data.folders import ImageSet, read_data
from cnnlens.outputs import check_output_folder, output_folder, subfolder, write_json
from cnnlens.probing.dissection import (
    DETECTOR_IOU,
    TOP_QUANTILE,
    Dissection,
    check_dissection_settings,
    dissect,
)
from cnnlens.probing.unit_figures import dissection_figure
from cnnlens.report.sections import Figure, Section, Table

HELP = "network dissection: which units of a layer detect which concepts (IoU with concept masks)"
DESCRIPTION = (
    "Network dissection (Bau et al. 2017). Per unit of --layer: the threshold at the top --quantile of "
    "its activations over DATA, the upsampled maps thresholded, and their IoU with every concept's "
    "masks summed over DATA; a unit detects its best concept when that IoU is above --iou. Concepts: "
    "--concepts MASKS (MASKS/<concept>/<image-stem>.png; a missing file means the image does not show "
    "the concept), or DATA's own masks (a manifest's mask column or --masks), each naming the concept of "
    "its image's class. `cnnlens data concepts` makes an offline concept set. Two passes over DATA. "
    "Writes OUT/dissect/dissect.json, dissect.png and a section of OUT/index.html."
)


def add_parser(tools: argparse._SubParsersAction) -> None:
    p = add_command(tools, "dissect", run, model=True, help=HELP, description=DESCRIPTION)
    p.add_argument("data", metavar="DATA", help="class folders, a CSV manifest or a folder of images")
    p.add_argument("--concepts", metavar="MASKS", help="folder of concept subfolders of masks")
    p.add_argument("--masks", help="DATA's mask folder, matched by file name (concepts: the classes)")
    p.add_argument("--split", choices=("train", "val", "test"), help="only this split of a manifest")
    p.add_argument("--layer", required=True, help="dotted layer name (see `cnnlens layers`)")
    p.add_argument(
        "--quantile",
        type=float,
        default=TOP_QUANTILE,
        help=f"top activation quantile (default {TOP_QUANTILE})",
    )
    p.add_argument("--iou", type=float, default=DETECTOR_IOU, help=f"detector IoU (default {DETECTOR_IOU})")
    p.add_argument("--batch-size", type=int, default=32, help="images per forward pass (default 32)")
    p.add_argument(
        "--workers", type=int, help="decoding processes (default: 0 below 64 images, else up to 4)"
    )
    p.add_argument("--top", type=int, default=20, help="units listed in the page's table (default 20)")
    add_out(p)


def concepts_of(args: argparse.Namespace) -> tuple[ImageSet, ConceptSet]:
    if args.concepts is not None:
        data = read_data(args.data, labelled=False, split=args.split)
        return data, read_concepts(args.concepts, data.samples)
    data = read_data(args.data, masks=args.masks, split=args.split)
    return data, label_concepts(data)


def run(args: argparse.Namespace) -> int:
    check_output_folder(args.out)
    check_dissection_settings(args.quantile, args.iou, args.batch_size)
    data, concepts = concepts_of(args)
    model = model_from_args(args)
    name, _ = feature_layer(model, args.layer)
    n = len(data.samples)
    with progress_bar("dissect", 2 * n) as advance:
        result = dissect(
            model,
            data.samples,
            concepts,
            name,
            quantile=args.quantile,
            min_iou=args.iou,
            batch_size=args.batch_size,
            workers=args.workers,
            progress=lambda what, k: advance(what, k),
        )
    folder = subfolder(output_folder(args.out), "dissect")
    save_png(folder, "dissect.png", dissection_figure(result), dpi=110)
    write_json(folder / "dissect.json", {"model": model.name, "data": str(args.data), **result.to_dict()})
    page = publish(args.out, section(result, model.name, args.top))
    console.print(
        f"{model.name} {name}: {result.summary()} ({result.images} images, {len(concepts.names)} concepts)"
    )
    hist = result.histogram()
    if hist:
        console.print("detectors per concept: " + ", ".join(f"{c} {k}" for c, k in hist.items()))
    console.print(f"wrote {folder / 'dissect.json'}, {folder / 'dissect.png'} and {page}")
    return 0


def section(result: Dissection, model: str, top: int) -> Section:
    order = result.best_iou.argsort(descending=True)[:top].tolist()
    rows = [
        [
            k,
            result.concepts[int(result.best[k])],
            float(result.best_iou[k]),
            float(result.thresholds[k]),
            "yes" if bool(result.detectors[k]) else "no",
        ]
        for k in order
    ]
    text = (
        f"Network dissection of {model} at {result.layer} on {result.images} images with "
        f"{len(result.concepts)} concepts: {result.summary()}. A unit's activation map is thresholded at "
        f"its top {result.quantile:g} quantile over the dataset, upsampled to the input, and compared with "
        "each concept's masks (IoU summed over the dataset)."
    )
    return Section(
        key="dissect",
        title=f"Network dissection: {result.layer}",
        text=text,
        verdict=result.summary(),
        figures=[Figure("dissect.png", "detector units per concept; every unit's best IoU")],
        tables=[
            Table(["unit", "concept", "IoU", "threshold", "detector"], rows, f"top {len(rows)} units by IoU")
        ],
        order=60,
    )
