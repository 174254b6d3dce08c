"""``cnnlens models``: what can be loaded, and what one model looks like."""

from __future__ import annotations

import argparse

from rich.table import Table

from cnnlens.cli.common import add_command, add_model_arguments, console, model_from_args


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = add_command(sub, "models", run, help="list the models cnnlens can load, or show one")
    p.add_argument("--all", action="store_true", help="also list every timm model name")
    p.add_argument("--show", metavar="MODEL", help="show one model: preprocessing, classes and layers")
    add_model_arguments(p)


def run(args: argparse.Namespace) -> int:
    if args.show:
        args.model = args.show
        return show(args)
    from cnnlens.models import list_models

    table = Table(title="models")
    for col in ("name", "source", "offline", "weights"):
        table.add_column(col)
    rows = list_models(include_timm=args.all)
    for row in rows:
        table.add_row(row.name, row.source, "yes" if row.offline else "no (download)", row.description)
    console.print(table)
    if not args.all:
        console.print("Any timm model name also works: `cnnlens models --all` lists them.")
    return 0


def show(args: argparse.Namespace) -> int:
    model = model_from_args(args)
    p = model.preprocessing
    console.print(f"[bold]{model.name}[/] ({model.arch}, {model.arch_source}); weights: {model.source}")
    console.print(
        f"input {p.crop}x{p.crop} (resize {p.resize}, {p.interpolation}), mean {p.mean}, std {p.std}"
    )
    console.print(f"{model.num_classes} classes; default CAM layer: {model.default_layer}")
    table = Table(title="layers (execution order)")
    for col in ("layer", "type", "output shape", "parameters"):
        table.add_column(col)
    for info in model.layer_table:
        shape = "x".join(map(str, info.output_shape)) if info.output_shape else "-"
        table.add_row(info.name, info.kind, shape, f"{info.parameters:,}")
    console.print(table)
    return 0
