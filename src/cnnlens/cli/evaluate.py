"""``cnnlens evaluate``: accuracy, per-class metrics, confusion matrix and worst errors of a trained model."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from rich.table import Table

from cnnlens.cli.common import add_command, console
from cnnlens.cli.train import shown_warnings
from cnnlens.evaluation.classification import METRICS, Evaluation, evaluate, write_evaluation
from cnnlens.validation import check_int_at_least, check_positive_int

HELP = "metrics of a trained model on its test split or on another dataset"
DESCRIPTION = (
    "Writes metrics.json, confusion.json, confusion.png and misclassified.png to --out "
    "(default RUN/eval-<split> or RUN/eval-<data name>)."
)


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = add_command(sub, "evaluate", run, help=HELP, description=DESCRIPTION)
    p.add_argument("run", metavar="RUN", help="training run folder (or a checkpoint, with DATA)")
    p.add_argument(
        "data", nargs="?", metavar="DATA", help="dataset to evaluate on (default: the run's test split)"
    )
    p.add_argument(
        "--split", choices=("train", "val", "test"), default="test", help="the run's split (default test)"
    )
    p.add_argument("-o", "--out", type=Path, help="output folder")
    p.add_argument("--errors", type=int, default=16, help="misclassified images in the gallery (default 16)")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--strict", action="store_true", help="stop on unreadable files instead of skipping them")
    p.add_argument("--json", action="store_true", help="print the metrics as JSON instead of a table")


def metrics_table(result: Evaluation) -> Table:
    m = result.metrics
    table = Table(
        title=f"{result.source}: accuracy {m.accuracy:.4f} on {m.total} images", title_justify="left"
    )
    table.add_column("class")
    table.add_column("support", justify="right")
    for name in METRICS:
        table.add_column(name, justify="right")
    for i, name in enumerate(m.class_names):
        table.add_row(name, str(int(m.support[i])), *(f"{m.per_class[k][i]:.4f}" for k in METRICS))
    table.add_row("macro", str(m.total), *(f"{m.macro[k]:.4f}" for k in METRICS), style="bold")
    return table


def default_out(args: argparse.Namespace) -> Path:
    base = Path(args.run) if Path(args.run).is_dir() else Path(args.run).parent
    return base / (f"eval-{Path(args.data).stem}" if args.data else f"eval-{args.split}")


def run(args: argparse.Namespace) -> int:
    check_int_at_least("--errors", args.errors, 0)
    check_positive_int("--batch-size", args.batch_size)
    with shown_warnings(), console.status("evaluating"):
        result = evaluate(
            args.run, args.data, split=args.split, batch_size=args.batch_size, strict=args.strict
        )
    paths = write_evaluation(result, args.out or default_out(args), args.errors)
    if args.json:
        console.print_json(json.dumps(result.to_dict(args.errors)))
    else:
        console.print(metrics_table(result))
        console.print(f"wrote {', '.join(str(p) for p in paths.values())}")
    return 0
