"""``cnnlens benchmark``: every method x every metric over images with object masks."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from rich.table import Table

from cnnlens.attribution import method_names
from cnnlens.cli.common import (
    add_command,
    build_methods,
    coerce_floats,
    console,
    method_choices_help,
    model_from_args,
    parse_params,
    progress_bar,
    split_list,
)
from cnnlens.cli.train import shown_warnings
from cnnlens.data.folders import SPLITS
from cnnlens.errors import InputError
from cnnlens.evaluation.benchmark import REFERENCES, BenchmarkRun, load_dataset, run_benchmark
from cnnlens.evaluation.metrics import (
    Metric,
    column_names,
    create_metric,
    get_metric,
    metric_names,
    metric_of,
)
from cnnlens.outputs import check_output_folder, output_lock
from cnnlens.report.benchmark import benchmark_report, best_rows, format_cell

HELP = "score attribution methods with faithfulness, localisation, sanity and other metrics"
DESCRIPTION = (
    "Writes OUT/benchmark.json, OUT/benchmark.csv, OUT/benchmark.html and "
    "OUT/results.jsonl (per image; a re-run resumes and only computes what is missing, and "
    "results are keyed by model, image and mask, so another model or data never reuses them). "
    "DATA is 'samples' (the shipped photos with hand-drawn object masks), a folder with "
    "images/ (searched recursively) and optional masks/<name>.<ext> (non-zero = object) matched "
    "by file name, or a CSV manifest path,label[,mask][,split] such as the one `cnnlens data "
    "synth` writes. An unreadable image or an empty mask is skipped with a warning."
)


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = add_command(sub, "benchmark", run, model=True, help=HELP, description=DESCRIPTION)
    p.add_argument(
        "--data", default="samples", help="'samples', a folder or a manifest .csv (default: samples)"
    )
    p.add_argument(
        "--split",
        choices=SPLITS,
        help="only the manifest rows of this split (DATA is a manifest or a folder with manifest.csv)",
    )
    p.add_argument("--methods", action="append", help=method_choices_help() + " (default: all)")
    p.add_argument(
        "--metrics",
        action="append",
        help="comma-separated metrics, or 'all': "
        + ", ".join(metric_names())
        + " (default: all); naming a further column ("
        + ", ".join(column_names())
        + ") selects the metric that reports it",
    )
    p.add_argument("-p", "--param", action="append", metavar="KEY=VALUE", help="method parameter")
    p.add_argument(
        "--metric-param",
        action="append",
        metavar="KEY=VALUE",
        help="metric parameter, given to every selected metric that takes it, e.g. steps=10",
    )
    p.add_argument("--layer", help="layer for CAM methods (default: the model's)")
    p.add_argument(
        "--quick",
        action="store_true",
        help="each method's lighter settings (fewer samples/steps/windows; see `cnnlens methods`)",
    )
    p.add_argument("--no-references", action="store_true", help="leave out the Gaussian and random rows")
    p.add_argument("--seed", type=int, default=0, help="seed of the random reference map (default 0)")
    p.add_argument("--cache", type=Path, help="attribution cache folder (default: OUT/cache)")
    p.add_argument("-o", "--out", required=True, type=Path, help="output folder")


def selected(values: list[str] | None, every: list[str]) -> list[str]:
    names = split_list(values)
    return every if not names or names == ["all"] else names


def selected_metrics(values: list[str] | None) -> list[str]:
    """The metric names asked for; a further column (``randomisation_ssim``) names its metric."""
    return list(dict.fromkeys(metric_of(n) for n in selected(values, metric_names())))


def build_metrics(names: list[str], params: dict[str, Any]) -> list[Metric]:
    """Create each named metric with the parameters it accepts; unused parameters are an error."""
    classes = [get_metric(n) for n in names]
    used: set[str] = set()
    metrics = []
    for cls in classes:
        accepted = cls.parameters()
        kwargs = {k: v for k, v in params.items() if k in accepted}
        used |= set(kwargs)
        metrics.append(create_metric(cls.name, **coerce_floats(kwargs, accepted)))
    unused = set(params) - used
    if unused:
        raise InputError(f"no selected metric takes the parameter(s) {', '.join(sorted(unused))}")
    return metrics


def print_table(summary: dict[str, Any]) -> None:
    best = best_rows(summary)
    table = Table(title="mean ± 95% CI over images (best method per column in bold)", title_justify="left")
    table.add_column("method")
    for m in summary["metrics"]:
        table.add_column(f"{m['name']} {'↑' if m['higher_is_better'] else '↓'}", justify="right")
    for row in summary["table"]:
        cells = []
        for m in summary["metrics"]:
            cell = row["metrics"][m["name"]]
            text = format_cell(cell["mean"], cell["ci95"])
            cells.append(f"[bold]{text}[/]" if row["row"] in best.get(m["name"], set()) else text)
        table.add_row(row["row"], *cells, style="dim" if row["reference"] else None)
    console.print(table)


def run(args: argparse.Namespace) -> int:
    check_output_folder(args.out)
    if args.cache is not None:
        check_output_folder(args.cache, "--cache")
    metrics = build_metrics(selected_metrics(args.metrics), parse_params(args.metric_param))
    names = selected(args.methods, method_names())
    with shown_warnings():  # an unreadable image or mask: one yellow line each
        images = load_dataset(args.data, split=args.split)
    model = model_from_args(args)
    every = not split_list(args.methods) or split_list(args.methods) == ["all"]
    methods = build_methods(
        model, names, parse_params(args.param), args.layer, quick=args.quick, skip_unsupported=every
    )
    references = () if args.no_references else REFERENCES
    bench = BenchmarkRun(
        model, methods, metrics, args.out, args.cache or args.out / "cache", references, args.seed
    )
    with (
        output_lock(args.out),
        progress_bar("benchmark", len(images) * (len(methods) + len(references)), transient=True) as advance,
    ):
        summary = run_benchmark(bench, images, advance)
        report = benchmark_report(summary, args.out)
    print_table(summary)
    console.print(f"wrote {report}, {args.out / 'benchmark.json'} and {args.out / 'benchmark.csv'}")
    return 0
