"""``cnnlens explain-dataset``: every image of a dataset, every method, into one resumable store."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from rich.table import Table as RichTable

from cnnlens.attribution.engine.precision import PRECISIONS
from cnnlens.cli.common import (
    add_command,
    build_methods,
    console,
    hold_out,
    method_choices_help,
    model_from_args,
    parse_params,
    progress_bar,
    split_list,
)
from cnnlens.data.folders import SPLITS
from cnnlens.dataset_explain.engine import ENGINES, Job, Recipe, check_job, explain_dataset
from cnnlens.dataset_explain.figures import class_means_figure
from cnnlens.dataset_explain.store import DTYPES, SECTION
from cnnlens.errors import InputError
from cnnlens.outputs import check_output_folder
from cnnlens.report.sections import Figure, Section, Table, render_sections, write_section

HELP = "explain every image of a dataset into one resumable store (zarr maps + Parquet table)"
DESCRIPTION = (
    "Streams DATA (class folders, a manifest, a split) in batches through each method and writes "
    "STORE/maps.zarr (one (N, H, W) array per method), STORE/table.parquet (path, label, prediction, "
    "target, score, per-method numbers), per-class mean maps and STORE/index.html. Killed, the same "
    "command resumes where it stopped."
)


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = add_command(sub, "explain-dataset", run, model=True, help=HELP, description=DESCRIPTION)
    hold_out(p)
    p.add_argument("data", metavar="DATA", help="class-folder dataset, manifest (.csv) or exported set")
    p.add_argument("-m", "--methods", action="append", required=True, help=method_choices_help())
    p.add_argument("-o", "--out", type=Path, required=True, help="the store (a new folder, or one to resume)")
    p.add_argument("--split", choices=SPLITS, help="only the manifest rows of this split")
    p.add_argument("--masks", help="mask folder of a class-folder dataset (energy inside the mask)")
    p.add_argument("--batch-size", type=int, default=32, help="images explained together (default 32)")
    p.add_argument("--dtype", choices=DTYPES, default="float16", help="of the stored maps (default float16)")
    p.add_argument(
        "--target",
        default="pred",
        help="true (each image's label; the model must have the dataset's classes), pred (the model's "
        "top class; the default) or a class index or name for every image",
    )
    p.add_argument("--engine", choices=ENGINES, default="local", help="local (default) or ray (cnnlens[ray])")
    p.add_argument("--ray-workers", type=int, help="Ray actors (default: one per CPU, or per GPU)")
    p.add_argument("--workers", type=int, help="decoding processes of the local engine (default: up to 4)")
    p.add_argument("--layer", help="layer for CAM methods (default: the model's)")
    p.add_argument("-p", "--param", action="append", metavar="KEY=VALUE", help="method parameter")
    p.add_argument("--precision", choices=PRECISIONS, help="passes of the methods that take it")
    p.add_argument("--quick", action="store_true", help="lighter method settings (see `cnnlens methods`)")
    p.add_argument("--force", action="store_true", help="replace a store made with other settings")


def run(args: argparse.Namespace) -> int:
    check_output_folder(args.out)
    if args.ray_workers is not None and args.ray_workers < 1:
        raise InputError(f"--ray-workers must be a positive integer, got {args.ray_workers}")
    names = split_list(args.methods)
    if not names:
        raise InputError("--methods names no method; e.g. --methods gradcam,saliency")
    model = model_from_args(args)
    methods = build_methods(
        model, names, parse_params(args.param), args.layer, quick=args.quick, precision=args.precision
    )
    recipe = Recipe.of(
        methods, model=args.model, weights=args.weights, pretrained=not args.no_pretrained, device=args.device
    )
    job = Job(
        data=str(args.data),
        recipe=recipe,
        split=args.split,
        masks=args.masks,
        target=str(args.target),
        batch_size=args.batch_size,
        dtype=args.dtype,
        workers=args.workers,
    )
    check_job(job)
    with progress_bar("explaining", 0) as advance:

        def started(todo: int, total: int) -> None:
            if todo < total:
                console.print(f"resuming: {total - todo} of {total} images already done")
            advance(n=0, total=todo)

        summary = explain_dataset(
            job,
            args.out,
            engine=args.engine,
            force=args.force,
            built=(model, methods),
            on_start=started,
            advance=lambda n: advance(n=n),
            ray_workers=args.ray_workers,
        )
    write_store_section(args.out, summary)
    print_summary(summary)
    console.print(f"wrote {args.out} ({summary['explained']} of {summary['images']} images explained)")
    return 1 if summary["failed"] else 0


def write_store_section(out: Path, summary: dict[str, Any]) -> Path:
    """The store's section of ``OUT/index.html``: mean maps per class, the per-class table."""
    folder = out / SECTION
    folder.mkdir(exist_ok=True)
    class_means_figure(out, folder / "class_means.png")
    methods = summary["methods"]
    columns = ["class", "images", "accuracy", "mean score"]
    columns += [f"{m} {n}" for m in methods for n in ("entropy", "energy in mask")]
    rows = [
        [r["class_name"], r["images"], r["accuracy"], r["mean_score"]]
        + [r[f"{m}_{n}"] for m in methods for n in ("entropy", "energy_in_mask")]
        for r in summary["class_summary"]
    ]
    section = Section(
        key=SECTION,
        title="Explanations over the dataset",
        text=f"{summary['explained']} of {summary['images']} images explained with {', '.join(methods)}. "
        "Mean map per class (rows) and method (columns), each scaled on its own; the per-class means "
        "of the table's numbers (entropy: 1 is a flat map; energy in mask: share of the positive "
        "attribution inside the object's mask, where images have masks).",
        figures=[Figure("class_means.png", "mean map per class and method")],
        tables=[Table(columns, rows, "per class")],
    )
    write_section(out, section)
    return render_sections(out, "cnnlens explain-dataset")


def print_summary(summary: dict[str, Any]) -> None:
    table = RichTable(title="per class", title_justify="left")
    methods = summary["methods"]
    for col in ["class", "images", "accuracy", "score", *[f"{m} entropy" for m in methods]]:
        table.add_column(col)

    def fmt(v: object) -> str:
        return f"{v:.3f}" if isinstance(v, float) else ("" if v is None else str(v))

    for r in summary["class_summary"]:
        cells = [r["class_name"], r["images"], r["accuracy"], r["mean_score"]]
        table.add_row(*[fmt(c) for c in cells + [r[f"{m}_entropy"] for m in methods]])
    console.print(table)
