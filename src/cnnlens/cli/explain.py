"""``cnnlens explain``: attribution maps for image files."""

from __future__ import annotations

import argparse
from pathlib import Path

from rich.table import Table

from cnnlens.attribution import method_names
from cnnlens.attribution.engine.layout import MEMORY_FORMATS
from cnnlens.attribution.engine.precision import PRECISIONS
from cnnlens.attribution.engine.runner import BACKENDS
from cnnlens.cli.common import (
    add_command,
    build_methods,
    console,
    error_console,
    method_choices_help,
    model_from_args,
    parse_params,
    split_list,
)
from cnnlens.data.images import MAX_PIXELS
from cnnlens.errors import InputError
from cnnlens.outputs import check_output_folder, output_lock
from cnnlens.pipeline import (
    ImageResult,
    check_targets,
    explain_images,
    load_images,
    summarize,
    write_summary,
)
from cnnlens.report.html import extra_notes
from cnnlens.validation import check_positive_int

HELP = "explain the model's decision on image files"
DESCRIPTION = (
    "Writes OUT/<image>/<method>.png and .npz for each image and method, and "
    "OUT/summary.json. Unreadable images are reported and skipped."
)


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = add_command(sub, "explain", run, image="many", model=True, help=HELP, description=DESCRIPTION)
    p.add_argument("-m", "--method", action="append", help=method_choices_help() + " (default: all)")
    p.add_argument(
        "-t",
        "--target",
        action="append",
        help="class index or name to explain (repeatable; default: top-1)",
    )
    p.add_argument("--layer", help="layer for CAM methods (dotted name; default: the model's)")
    p.add_argument(
        "-p",
        "--param",
        action="append",
        metavar="KEY=VALUE",
        help="method parameter, e.g. window=48",
    )
    p.add_argument(
        "--precision",
        choices=PRECISIONS,
        help="passes of the methods that take it: fp32, bf16 (autocast) or auto (bf16 only where the "
        "CPU/GPU has it natively and the method's maps stay faithful; the default)",
    )
    p.add_argument(
        "--memory-format",
        choices=MEMORY_FORMATS,
        help="input layout of the methods' passes: channels_last, contiguous, or auto (channels_last "
        "for inference passes, contiguous for back-propagated ones; the default)",
    )
    p.add_argument(
        "--backend",
        choices=BACKENDS,
        help="how inference passes run: eager (the model exactly as it is), fused (convolution, batch "
        "norm and activation in one oneDNN call) or auto (fused where it applies; the default)",
    )
    p.add_argument(
        "--quick",
        action="store_true",
        help="lighter settings for a first look (fewer samples/steps/windows; see `cnnlens methods`)",
    )
    p.add_argument("--top", type=int, default=5, help="how many predictions to print (default 5)")
    p.add_argument(
        "--max-pixels",
        type=int,
        default=MAX_PIXELS,
        metavar="N",
        help=f"refuse images of more than N pixels as possible decompression bombs (default {MAX_PIXELS:,})",
    )
    p.add_argument("-o", "--out", required=True, type=Path, help="output folder")


def selected_methods(values: list[str] | None) -> list[str]:
    names = split_list(values)
    return method_names() if not names or names == ["all"] else names


def print_results(results: list[ImageResult], top: int) -> None:
    for r in results:
        table = Table(title=f"{r.stem}: top-{top}", title_justify="left")
        table.add_column("class")
        table.add_column("probability", justify="right")
        for _, name, prob in r.predictions:
            table.add_row(name, f"{prob:.3f}")
        console.print(table)
    timing = Table(title="explanations", title_justify="left")
    notes = {id(e): ", ".join(extra_notes(e)) for r in results for e, _, _ in r.explanations}
    columns = ("image", "method", "target", "layer", "seconds") + (("notes",) if any(notes.values()) else ())
    for col in columns:
        timing.add_column(col)
    for r in results:
        for e, _, _ in r.explanations:
            row = (r.stem, e.method, e.target_name(), e.layer or "", f"{e.seconds:.2f}", notes[id(e)])
            timing.add_row(*row[: len(columns)])
    console.print(timing)


def run(args: argparse.Namespace) -> int:
    check_positive_int("--top", args.top)
    check_positive_int("--max-pixels", args.max_pixels)
    check_output_folder(args.out)
    if any(not part.strip() for value in args.target or [] for part in value.split(",")):
        raise InputError(
            f"--target {','.join(args.target)!r} has an empty class; give class indices or names "
            "(-t 281 -t tabby), or leave out --target for each image's top class"
        )
    names = selected_methods(args.method)
    model = model_from_args(args)
    every = not split_list(args.method) or split_list(args.method) == ["all"]
    methods = build_methods(
        model,
        names,
        parse_params(args.param),
        args.layer,
        quick=args.quick,
        skip_unsupported=every,
        precision=args.precision,
        memory_format=args.memory_format,
        backend=args.backend,
    )
    targets = check_targets(model, split_list(args.target))
    images, errors = load_images(args.images, max_pixels=args.max_pixels)
    if not images and len(errors) == 1:  # nothing explained: an earlier summary.json stays as it is
        raise InputError(f"no image could be read: {errors[0]['error']}")
    for e in errors:
        error_console.print(f"[red]error:[/] {e['error']}", highlight=False)
    if not images:
        error_console.print(f"[red]error:[/] no image could be read (none of {len(errors)})")
        return 2
    with output_lock(args.out):
        with console.status("explaining") as status:
            results = explain_images(
                model,
                images,
                methods,
                args.out,
                targets=targets,
                top=args.top,
                progress=lambda what: status.update(f"explaining {what}"),
            )
        print_results(results, args.top)
        for r in results:
            for msg in r.errors:
                error_console.print(f"[red]error:[/] {msg}", highlight=False)
        summary = summarize(model, results, errors, args.out)
        console.print(f"wrote {write_summary(summary, args.out)}")
    failed = bool(errors) or any(r.errors for r in results)
    return 1 if failed else 0
