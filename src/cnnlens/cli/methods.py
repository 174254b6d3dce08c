"""``cnnlens methods``: the registered attribution methods."""

from __future__ import annotations

import argparse

from rich.table import Table

from cnnlens.attribution import get_method, method_names, methods_markdown
from cnnlens.attribution.core.registry import class_column
from cnnlens.cli.common import add_command, console, signature_text


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = add_command(sub, "methods", run, help="list the attribution methods and their parameters")
    p.add_argument("--markdown", action="store_true", help="print the docs table (docs/methods.md)")


def run(args: argparse.Namespace) -> int:
    if args.markdown:
        print(methods_markdown(), end="")
        return 0
    table = Table(title="attribution methods")
    for col in ("method", "family", "layer", "class", "what it shows", "parameters", "reference"):
        table.add_column(col)
    for name in method_names():
        cls = get_method(name)
        table.add_row(
            name,
            cls.family,
            "yes" if cls.uses_layer else "",
            class_column(cls),
            cls.summary,
            signature_text(cls),
            cls.reference,
        )
    console.print(table)
    return 0
