"""``cnnlens serve``: the local web explorer."""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from cnnlens.cli.common import add_command, console
from cnnlens.errors import CnnlensError, InputError
from cnnlens.models import DEFAULT_MODEL, LoadedModel, load_model
from cnnlens.validation import check_int_at_least

DESCRIPTION = (
    "Serves a page at http://HOST:PORT/: pick an image from --data or upload one, see the top-5, run "
    "methods (in a background queue, cancellable) for one or two targets and a layer, and compare the "
    "maps with opacity and threshold controls. Give --model twice to compare two models (A and B) on "
    "the same image: each model's top-5, and each method's maps side by side on one colour scale. "
    "Binds 127.0.0.1 (this machine only) unless --host says otherwise. Needs the 'serve' extra "
    "(fastapi, uvicorn, python-multipart)."
)


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = add_command(sub, "serve", run, help="a local web explorer", description=DESCRIPTION)
    p.add_argument(
        "--model",
        action="append",
        metavar="MODEL",
        help="model name (see `cnnlens models`), checkpoint file or run folder; give it twice to "
        f"compare two models, A and B (default: {DEFAULT_MODEL})",
    )
    p.add_argument(
        "--weights", help="local state-dict file to load into the named architecture (one model only)"
    )
    p.add_argument(
        "--no-pretrained",
        action="store_true",
        help="random weights instead of downloading pretrained ones (for every named model)",
    )
    p.add_argument("--device", default=None, help="torch device, e.g. cpu or cuda (default: cpu)")
    p.add_argument("--data", type=Path, help="a folder of images to pick from (searched recursively)")
    p.add_argument("--port", type=int, default=8765, help="port (default 8765)")
    p.add_argument(
        "--host", default="127.0.0.1", help="address to bind (default 127.0.0.1: this machine only)"
    )
    p.add_argument("--max-upload-mb", type=float, default=8.0, help="largest upload in MB (default 8)")
    p.add_argument(
        "--max-pixels", type=int, default=40_000_000, help="largest upload in pixels (default 40 million)"
    )


def run(args: argparse.Namespace) -> int:
    try:
        import uvicorn

        from cnnlens.serve import Explorer, Limits, create_app
    except ImportError as err:
        raise InputError(
            f"cnnlens serve needs the 'serve' extra: pip install 'cnnlens[serve]' ({err})"
        ) from None
    if not 0 <= args.port <= 65535:
        raise InputError(f"--port must be between 0 and 65535, got {args.port}")
    check_int_at_least("--max-pixels", args.max_pixels, 1)
    if not args.max_upload_mb > 0:
        raise InputError(f"--max-upload-mb must be positive, got {args.max_upload_mb}")
    if args.data is not None and not args.data.is_dir():
        raise InputError(f"--data {args.data} is not a folder of images")
    start = time.perf_counter()
    models = load_models(args)
    limits = Limits(max_bytes=int(args.max_upload_mb * 2**20), max_pixels=args.max_pixels)
    explorer = Explorer(models, args.data, limits=limits)
    app = create_app(explorer)
    names = " and ".join(f"{label}: {m.name}" for label, m in zip("AB", models, strict=False))
    console.print(
        f"cnnlens explorer for {names if len(models) > 1 else models[0].name} on "
        f"http://{args.host}:{args.port}/ (ready in {time.perf_counter() - start:.1f} s; Ctrl-C stops it)"
    )
    try:
        uvicorn.run(app, host=args.host, port=args.port, log_level="warning")
    finally:
        explorer.close()
    return 0


def load_models(args: argparse.Namespace) -> list[LoadedModel]:
    """The one or two models of ``--model``; a model that fails to load is named (A or B) in the
    one error line."""
    specs = args.model or [DEFAULT_MODEL]
    if len(specs) > 2:
        raise InputError(
            f"--model given {len(specs)} times ({', '.join(specs)}); the explorer compares at most two models"
        )
    if args.weights is not None and len(specs) > 1:
        raise InputError(
            "--weights loads into one named model; to compare two models give each as a checkpoint "
            "file or run folder"
        )
    models = []
    for label, spec in zip("AB", specs, strict=False):
        with console.status(f"loading {spec}"):
            try:
                models.append(
                    load_model(
                        spec, weights=args.weights, pretrained=not args.no_pretrained, device=args.device
                    )
                )
            except CnnlensError as err:
                if len(specs) == 1:
                    raise
                raise type(err)(f"model {label} (--model {spec}): {err}") from None
    return models
