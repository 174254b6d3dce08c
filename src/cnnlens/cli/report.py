"""``cnnlens report``: one HTML page for a trained run or any cnnlens output folder."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from cnnlens.cli.common import (
    add_command,
    build_methods,
    console,
    parse_params,
    progress_bar,
    split_list,
)
from cnnlens.cli.train import shown_warnings
from cnnlens.errors import InputError
from cnnlens.models.loaded import LoadedModel
from cnnlens.validation import check_int_at_least

HELP = "one HTML page for a trained run or any cnnlens output folder"
DESCRIPTION = (
    "Writes OUT (an .html page) and OUT_files/ beside it (thumbnails and figures, loaded lazily). "
    "For a training run: model card, training curves, accuracy and per-class metrics, confusion matrix "
    "and most confusable pairs, and per class correct and wrong test images explained by --method "
    "(run now, on the test split). From the folder and its sub-folders: evaluate, explain/demo, "
    "benchmark, layers, channels and experiment outputs and the sections of probe/hypothesis tools."
)
DEFAULT_METHODS = ("gradcam", "occlusion")


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = add_command(sub, "report", run, help=HELP, description=DESCRIPTION)
    p.add_argument("folder", metavar="RUN_OR_FOLDER", type=Path, help="training run or output folder")
    p.add_argument("-o", "--out", type=Path, required=True, help="the page to write, e.g. report.html")
    p.add_argument(
        "-m",
        "--method",
        action="append",
        help=f"methods for the test images of a run (default: {','.join(DEFAULT_METHODS)}; 'none': none)",
    )
    p.add_argument(
        "-p",
        "--param",
        action="append",
        metavar="[METHOD:]KEY=VALUE",
        help="method parameter (repeatable); METHOD: sets it for that method only, "
        "e.g. -p occlusion:window=[8,16,24]",
    )
    p.add_argument("--per-class", type=int, default=2, help="correct and wrong images per class (default 2)")
    p.add_argument("--batch-size", type=int, default=64, help="images per forward pass when evaluating")


def split_params(
    pairs: list[str] | None, names: list[str]
) -> tuple[dict[str, Any], dict[str, dict[str, Any]]]:
    """``-p`` values: those for every method, and those given as ``METHOD:KEY=VALUE`` by method."""
    shared: list[str] = []
    own: dict[str, dict[str, Any]] = {}
    for pair in pairs or []:
        head, sep, rest = pair.partition(":")
        if sep and "=" not in head:
            if head not in names:
                raise InputError(f"-p {pair}: {head!r} is not one of the methods ({', '.join(names)})")
            own.setdefault(head, {}).update(parse_params([rest]))
        else:
            shared.append(pair)
    return parse_params(shared), own


def fitted_windows(model: LoadedModel, names: list[str], given: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """Quick windows of perturbation methods as large as the model's input or larger, shrunk to a quarter
    of it (a window the size of the image hides all of it and gives a constant map)."""
    from cnnlens.attribution import get_method

    side = min(model.preprocessing.input_size)
    out: dict[str, dict[str, Any]] = {}
    for name in names:
        cls = get_method(name)
        for key in cls.pixel_params:
            value = cls.quick_params.get(key)
            if key not in given and isinstance(value, int) and value >= side:
                out.setdefault(name, {})[key] = max(2, side // 4)
                if "stride" in cls.hyperparameters() and "stride" not in given:
                    out[name]["stride"] = max(1, side // 8)
    return out


def run(args: argparse.Namespace) -> int:
    from cnnlens.evaluation.classification import evaluate
    from cnnlens.report.run import build_report, check_report_out, is_run

    check_int_at_least("--per-class", args.per_class, 0)
    check_int_at_least("--batch-size", args.batch_size, 1)
    check_report_out(args.out)
    evaluation = None
    methods = []
    if is_run(args.folder):
        with shown_warnings(), console.status("evaluating the test split"):
            evaluation = evaluate(args.folder, batch_size=args.batch_size)
        names = split_list(args.method) or list(DEFAULT_METHODS)
        if names != ["none"]:
            params, own = split_params(args.param, names)
            per_method = fitted_windows(evaluation.model, names, params)
            for name, values in own.items():
                per_method[name] = per_method.get(name, {}) | values
            methods = build_methods(evaluation.model, names, params, None, quick=True, per_method=per_method)
    total = 0
    if evaluation is not None and methods:
        from cnnlens.report.run import pick_examples

        total = sum(len(v) for v in pick_examples(evaluation, args.per_class).values()) * len(methods)
    with progress_bar("explaining test images", max(total, 1)) as advance:
        page = build_report(
            args.folder,
            args.out,
            evaluation=evaluation,
            methods=methods,
            per_class=args.per_class,
            progress=advance,
        )
    console.print(f"wrote {page} and {page.with_name(page.stem + '_files')}/")
    return 0
