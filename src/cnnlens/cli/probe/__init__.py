"""``cnnlens probe``: what each layer and unit has learned. One module per tool, each exposing
``add_parser(subparsers)``; adding a tool is adding a module to :data:`TOOLS`.

Every tool writes its PNG figures and JSON numbers under ``OUT/<tool>/`` and a section of the
self-contained page ``OUT/index.html`` (:mod:`cnnlens.report.sections`).
"""

from __future__ import annotations

import argparse
import importlib

from cnnlens.cli.common import add_command, hold_every_out

TOOLS: tuple[str, ...] = (
    "filters",
    "activations",
    "patches",
    "neighbors",
    "embed",
    "dissect",
    "visualize",
    "deconv",
)


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = add_command(
        sub,
        "probe",
        help="what layers and units have learned: filters, activations, top patches, neighbours, ...",
        description="Probe what each layer and unit of a model has learned. Each tool writes PNG + JSON "
        "under OUT/<tool>/ and a section of OUT/index.html.",
    )
    tools = p.add_subparsers(dest="tool", metavar="TOOL", required=True)
    for name in TOOLS:
        importlib.import_module(f"cnnlens.cli.probe.{name}").add_parser(tools)
    hold_every_out(tools)
