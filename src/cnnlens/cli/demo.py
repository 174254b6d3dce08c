"""``cnnlens demo``: the main job on the offline default model and the sample photos."""

from __future__ import annotations

import argparse
from pathlib import Path

from cnnlens.attribution import Attribution, method_names
from cnnlens.cli.common import add_command, build_methods, console, error_console, progress_bar
from cnnlens.cli.explain import print_results
from cnnlens.data.samples import SAMPLE_NAMES, load_sample
from cnnlens.models import DEFAULT_MODEL, load_model
from cnnlens.outputs import check_output_folder, output_lock
from cnnlens.pipeline import explain_images, summarize, write_summary
from cnnlens.report import demo_report

HELP = "explain the sample photos with the offline default model and every method"
DESCRIPTION = "Writes OUT/index.html (self-contained report), OUT/summary.json and the maps."


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = add_command(sub, "demo", run, help=HELP, description=DESCRIPTION)
    p.add_argument("-o", "--out", type=Path, default=Path("demo-out"), help="output folder")
    p.add_argument(
        "--samples", default=",".join(SAMPLE_NAMES), help="comma-separated sample photos to explain"
    )
    p.add_argument(
        "--full",
        action="store_true",
        help="every method with its paper defaults (about 10x longer) instead of the quick settings",
    )


#: Demo-only settings on EfficientNet-Lite0: Score-CAM runs one forward pass per channel, and the
#: default CAM layer (``bn2``) has 1280 channels (80 s per photo on 2 cores); ``blocks.5`` has 192
#: channels at the same 7x7 resolution.
DEMO_SETTINGS: dict[str, dict[str, object]] = {"scorecam": {"layer": "blocks.5"}}


def run(args: argparse.Namespace) -> int:
    check_output_folder(args.out)
    names = [s.strip() for s in args.samples.split(",") if s.strip()]
    images = [(n, f"sample:{n}", load_sample(n)) for n in names]
    with console.status(f"loading {DEFAULT_MODEL}"):
        model = load_model(DEFAULT_MODEL)
    methods = build_methods(
        model,
        method_names(),
        {},
        None,
        quick=not args.full,
        per_method=None if args.full else DEMO_SETTINGS,
        skip_unsupported=True,
    )
    with output_lock(args.out):
        with progress_bar("explaining", len(images) * len(methods)) as advance:
            results = explain_images(model, images, methods, args.out, progress=advance)
        print_results(results, 5)
        for r in results:
            for msg in r.errors:
                error_console.print(f"[red]error:[/] {msg}", highlight=False)
        summary = summarize(model, results, [], args.out)
        write_summary(summary, args.out)
        settings = {m.name: _settings_text(m) for m in methods}
        report = demo_report(
            results,
            summary,
            [m.name for m in methods],
            args.out,
            settings=settings,
            preprocessing=model.preprocessing,
        )
    console.print(f"wrote {report} and {args.out / 'summary.json'}")
    return 1 if any(r.errors for r in results) else 0


def _settings_text(method: Attribution) -> str:
    params = {k: v for k, v in method.get_params().items() if k != "batch_size" and v is not None}
    return ", ".join(f"{k}={v}" for k, v in params.items())
