"""The ``cnnlens`` command line: thin wrappers that parse arguments and call the public API.

Each sub-command lives in its own module exposing ``add_parser(subparsers)``; adding a command is
adding a module to :data:`COMMANDS`.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import sys
from collections.abc import Sequence

from cnnlens.errors import CnnlensError

COMMANDS = (
    "models",
    "methods",
    "explain",
    "demo",
    "layers",
    "channels",
    "data",
    "train",
    "evaluate",
    "benchmark",
    "experiment",
    "probe",
    "hypothesis",
    "report",
    "serve",
)


def build_parser() -> argparse.ArgumentParser:
    from cnnlens import __version__

    parser = argparse.ArgumentParser(
        prog="cnnlens",
        description="Explain, probe and evaluate CNN image classifiers.",
    )
    parser.add_argument("--version", action="version", version=f"cnnlens {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="log more detail")
    parser.add_argument("--debug", action="store_true", help="show tracebacks on errors")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name in COMMANDS:
        importlib.import_module(f"cnnlens.cli.{name}").add_parser(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; returns the exit status (0 ok, 1 partial failure, 2 error)."""
    from cnnlens.cli.common import console, error_console, setup_runtime

    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.WARNING,
        format="%(levelname)s %(name)s: %(message)s",
    )
    setup_runtime()
    try:
        return int(args.func(args) or 0)
    except KeyboardInterrupt:
        error_console.print("[yellow]interrupted[/]")
        return 130
    except (CnnlensError, OSError) as err:  # the user's input or files: one line; a bug: its traceback
        if args.debug:
            raise
        error_console.print(f"[bold red]error:[/] {err}", highlight=False)
        return 2
    finally:
        console.file.flush()


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
