"""``cnnlens serve``: the local web explorer."""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from cnnlens.cli.common import add_command, console, model_from_args
from cnnlens.errors import InputError
from cnnlens.validation import check_int_at_least

DESCRIPTION = (
    "Serves a page at http://HOST:PORT/: pick an image from --data or upload one, see the top-5, run "
    "methods (in a background queue, cancellable) for one or two targets and a layer, and compare the "
    "maps with opacity and threshold controls. Binds 127.0.0.1 (this machine only) unless --host says "
    "otherwise. Needs the 'serve' extra (fastapi, uvicorn, python-multipart)."
)


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = add_command(sub, "serve", run, model=True, help="a local web explorer", description=DESCRIPTION)
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
    check_int_at_least("--port", args.port, 0)
    check_int_at_least("--max-pixels", args.max_pixels, 1)
    if not args.max_upload_mb > 0:
        raise InputError(f"--max-upload-mb must be positive, got {args.max_upload_mb}")
    if args.data is not None and not args.data.is_dir():
        raise InputError(f"--data {args.data} is not a folder of images")
    start = time.perf_counter()
    model = model_from_args(args)
    limits = Limits(max_bytes=int(args.max_upload_mb * 2**20), max_pixels=args.max_pixels)
    explorer = Explorer(model, args.data, limits=limits)
    app = create_app(explorer)
    console.print(
        f"cnnlens explorer for {model.name} on http://{args.host}:{args.port}/ "
        f"(ready in {time.perf_counter() - start:.1f} s; Ctrl-C stops it)"
    )
    try:
        uvicorn.run(app, host=args.host, port=args.port, log_level="warning")
    finally:
        explorer.close()
    return 0
