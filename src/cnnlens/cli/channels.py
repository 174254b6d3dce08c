"""``cnnlens channels``: Shapley values of the feature maps (channels) of one layer."""

from __future__ import annotations

import argparse
import csv
import json
from pathlib import Path

import torch
from rich.table import Table

from cnnlens.attribution.channels import ChannelShapley, channel_shapley, mean_activation
from cnnlens.cli.common import add_model_arguments, console, model_from_args
from cnnlens.data.images import load_image
from cnnlens.models.loaded import LoadedModel
from cnnlens.pipeline import check_targets


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "channels",
        help="Shapley values of the channels of one layer for one image",
        description="Writes OUT/channels.csv and OUT/channels.json (channels ranked by Shapley value, with "
        "standard errors) and OUT/channels.png (the top positive and negative channels' activation maps). "
        "A removed channel is replaced by zero or by its mean over --mean-from images; only the network "
        "after the layer is re-run per coalition.",
    )
    p.add_argument("image", metavar="IMAGE", help="image file")
    add_model_arguments(p)
    p.add_argument("--layer", help="dotted layer name (default: the model's CAM layer)")
    p.add_argument("-t", "--target", help="class index or name (default: top-1)")
    how = p.add_mutually_exclusive_group()
    how.add_argument("--samples", type=int, help="permutations to sample (default 64)")
    how.add_argument("--stderr", type=float, help="sample until every standard error is below this")
    how.add_argument("--exact", action="store_true", help="enumerate all coalitions (<= 16 channels)")
    p.add_argument("--max-permutations", type=int, default=2000, help="cap with --stderr (default 2000)")
    p.add_argument(
        "--baseline", choices=("zero", "mean"), default="zero", help="what a removed channel becomes"
    )
    p.add_argument(
        "--mean-from", nargs="+", metavar="IMAGE", help="images whose mean activation is the baseline"
    )
    p.add_argument("--top", type=int, default=6, help="channels of each sign in the figure (default 6)")
    p.add_argument("--seed", type=int, default=0, help="seed of the permutations (default 0)")
    p.add_argument("--batch-size", type=int, default=256, help="coalitions per pass (default 256)")
    p.add_argument("-o", "--out", required=True, type=Path, help="output folder")
    p.set_defaults(func=run)


def baseline_of(args: argparse.Namespace, model: LoadedModel, layer: str) -> str | torch.Tensor:
    if args.baseline == "zero":
        if args.mean_from:
            raise ValueError("--mean-from is only used with --baseline mean")
        return "zero"
    if not args.mean_from:
        raise ValueError("--baseline mean needs the images to average over: --mean-from IMAGE [IMAGE ...]")
    images = model.prepare([load_image(p) for p in args.mean_from])
    return mean_activation(model, images, layer)


def write_tables(result: ChannelShapley, out: Path) -> None:
    rows = result.ranking()
    with (out / "channels.csv").open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    (out / "channels.json").write_text(json.dumps({**result.summary(), "channels": rows}, indent=2))


def print_top(result: ChannelShapley, k: int) -> None:
    table = Table(
        title=f"{result.layer}: {result.target_name}, sum {float(result.values.sum()):+.4g} = "
        f"v(all) {result.full:.4g} - v(none) {result.empty:.4g} ({result.method}, "
        f"{result.permutations} permutations, {result.evaluations} evaluations)",
        title_justify="left",
    )
    for col in ("rank", "channel", "shapley", "stderr"):
        table.add_column(col, justify="right")
    rows = result.ranking()
    for row in rows[:k] + (rows[-k:] if len(rows) > 2 * k else rows[k:]):
        table.add_row(str(row["rank"]), str(row["channel"]), f"{row['shapley']:+.4g}", f"{row['stderr']:.2g}")
    console.print(table)


def run(args: argparse.Namespace) -> int:
    if args.top < 1:
        raise ValueError(f"--top must be at least 1, got {args.top}")
    image = load_image(args.image)
    model = model_from_args(args)
    layer = model.layer(args.layer)[0]
    target = check_targets(model, [args.target])[0] if args.target is not None else None
    baseline = baseline_of(args, model, layer)
    with console.status(f"channel Shapley values of {layer}"):
        result = channel_shapley(
            model,
            model.prepare(image),
            target,
            layer=layer,
            baseline=baseline,
            method="exact" if args.exact else "auto",
            samples=args.samples,
            stderr=args.stderr,
            max_permutations=args.max_permutations,
            seed=args.seed,
            batch_size=args.batch_size,
        )
    args.out.mkdir(parents=True, exist_ok=True)
    write_tables(result, args.out)
    from cnnlens.viz.layers import channels_figure

    channels_figure(result, model.preprocessing.view(image), k=args.top).savefig(
        args.out / "channels.png", dpi=110
    )
    print_top(result, args.top)
    console.print(f"wrote {args.out / 'channels.csv'}, channels.json and channels.png")
    return 0
