"""``cnnlens channels``: Shapley values of the feature maps (channels) of one layer."""

from __future__ import annotations

import argparse
import csv
import io
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from PIL import Image
from rich.table import Table

from cnnlens.cli.common import add_command, console, error_console, model_from_args
from cnnlens.data.folders import read_data
from cnnlens.data.images import load_image
from cnnlens.errors import InputError
from cnnlens.models.loaded import LoadedModel
from cnnlens.outputs import check_output_folder, output_lock, write_json, write_text, write_with
from cnnlens.pipeline import check_targets, load_images
from cnnlens.probing.channels import ChannelShapley, channel_shapley, mean_activation
from cnnlens.probing.patches import PATCH_MASS, Patch, channel_patches
from cnnlens.validation import check_positive_int

#: Images read at most from the folders and manifests given to --mean-from and --probes.
MEAN_LIMIT = 64

HELP = "Shapley values of the channels of one layer for one image"
DESCRIPTION = (
    "Writes OUT/channels.csv and OUT/channels.json (channels ranked by Shapley value, with "
    "standard errors) and OUT/channels.png: for each top positive and negative channel its activation "
    "map, the image patch where it fires most (the receptive field of its peak) and, given probe "
    "images, the probe patches where it fires most (boxes in channels.json). A removed channel is "
    "replaced by zero or by its mean over --mean-from images; only the network after the layer is "
    "re-run per coalition."
)


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = add_command(sub, "channels", run, image="one", model=True, help=HELP, description=DESCRIPTION)
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
        "--mean-from",
        nargs="+",
        metavar="PATH",
        help="images whose mean activation is the baseline: image files, folders (searched recursively, "
        "so a class-folder dataset works) or CSV manifests",
    )
    p.add_argument(
        "--mean-limit",
        type=int,
        default=MEAN_LIMIT,
        help=f"most images taken from --mean-from / --probes, spread evenly over them (default {MEAN_LIMIT})",
    )
    p.add_argument(
        "--probes",
        nargs="+",
        metavar="PATH",
        help="images to find each top channel's strongest patches in, as --mean-from (default: the "
        "--mean-from images)",
    )
    p.add_argument("--patches", type=int, default=4, help="probe patches per channel (default 4)")
    p.add_argument(
        "--patch-mass",
        type=float,
        default=PATCH_MASS,
        help="share of a unit's input gradient its patch holds; 1 = its whole receptive field "
        f"(default {PATCH_MASS})",
    )
    p.add_argument("--top", type=int, default=6, help="channels of each sign in the figure (default 6)")
    p.add_argument("--seed", type=int, default=0, help="seed of the permutations (default 0)")
    p.add_argument("--batch-size", type=int, default=256, help="coalitions per pass (default 256)")
    p.add_argument("-o", "--out", required=True, type=Path, help="output folder")


def image_paths(paths: list[str], limit: int) -> list[Path]:
    """The image files named by ``paths``, at most ``limit`` of them, spread evenly.

    An image file is taken as given; a ``.csv`` file (a manifest) or a folder is read by
    :func:`~cnnlens.data.folders.read_data` as a plain folder of images: the images below
    ``DIR/images/`` or ``DIR`` (so a class-folder dataset gives the images of every class), never its
    ``DIR/masks/``.

    Raises:
        ValueError: A path does not exist, a folder has no image files, or ``limit`` is below 1.
    """
    check_positive_int("--mean-limit", limit)
    files: list[Path] = []
    for text in paths:
        path = Path(text)
        if path.is_file() and path.suffix.lower() != ".csv":
            files.append(path)
        elif path.exists():
            files += [s.path for s in read_data(path, labelled=False).samples]
        else:
            raise InputError(f"{path}: no such file or folder")
    if len(files) > limit:
        files = [files[i * len(files) // limit] for i in range(limit)]
    return files


def read_images(paths: list[str], limit: int, what: str) -> tuple[list[str], list[Image.Image]]:
    """Load the images of ``paths`` (see :func:`image_paths`), skipping unreadable ones with a warning."""
    loaded, errors = load_images(image_paths(paths, limit))
    for err in errors:
        error_console.print(f"[yellow]warning:[/] skipped {err['error']}", highlight=False)
    if not loaded:
        raise InputError(f"none of the {what} images could be read")
    return [path for _, path, _ in loaded], [image for _, _, image in loaded]


def baseline_of(
    args: argparse.Namespace, model: LoadedModel, layer: str, images: list[Image.Image]
) -> str | torch.Tensor:
    if args.baseline == "zero":
        if args.mean_from:
            raise InputError("--mean-from is only used with --baseline mean (use --probes for probe images)")
        return "zero"
    if not images:
        raise InputError("--baseline mean needs the images to average over: --mean-from PATH [PATH ...]")
    return mean_activation(model, model.prepare(images), layer)


@dataclass
class Probes:
    """The probe images and where each top channel fires most in them and in the explained image."""

    paths: list[str]
    views: list[Image.Image]
    here: dict[int, list[Patch]]
    found: dict[int, list[Patch]]


def find_patches(
    args: argparse.Namespace,
    model: LoadedModel,
    result: ChannelShapley,
    x: torch.Tensor,
    probes: tuple[list[str], list[Image.Image]],
) -> Probes:
    """Where each of the top channels fires most: in the image ``x`` and in the probe images."""
    paths, images = probes
    pos, neg = result.top(args.top)
    chosen, batch, mass = pos + neg, min(args.batch_size, 32), args.patch_mass
    here = channel_patches(model, x, result.layer, chosen, mass=mass, batch_size=batch) if chosen else {}
    found = {}
    if chosen and images:
        probe_x = model.prepare(images)
        found = channel_patches(
            model, probe_x, result.layer, chosen, per_channel=args.patches, mass=mass, batch_size=batch
        )
    return Probes(paths, [model.preprocessing.view(im) for im in images], here, found)


def top_channels(result: ChannelShapley, probes: Probes, k: int) -> list[dict[str, Any]]:
    """The JSON rows of the top channels: value, sign and patches (probe patches name their file)."""
    pos, neg = result.top(k)
    return [
        {
            "channel": c,
            "sign": "+" if c in pos else "-",
            "shapley": float(result.values[c]),
            "stderr": float(result.stderr[c]),
            "patch": probes.here[c][0].to_dict(),
            "probe_patches": [
                {**p.to_dict(), "path": probes.paths[p.image]} for p in probes.found.get(c, [])
            ],
        }
        for c in pos + neg
    ]


def write_tables(result: ChannelShapley, out: Path, extra: dict[str, Any]) -> None:
    rows = result.ranking()
    text = io.StringIO(newline="")
    writer = csv.DictWriter(text, fieldnames=list(rows[0]))
    writer.writeheader()
    writer.writerows(rows)
    write_text(out / "channels.csv", text.getvalue())
    body = {**result.summary(), **extra, "channels": rows}
    write_json(out / "channels.json", json_safe(body), indent=2)


def json_safe(value: Any) -> Any:
    """``value`` with infinite and NaN floats as ``None`` (strict JSON has no ``Infinity``).

    A standard error is infinite after one antithetic pair (``--samples 2``).
    """
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {k: json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_safe(v) for v in value]
    return value


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
    check_positive_int("--top", args.top)
    check_positive_int("--patches", args.patches)
    check_output_folder(args.out)
    if not 0 < args.patch_mass <= 1:
        raise InputError(f"--patch-mass is a share in (0, 1], got {args.patch_mass}")
    image = load_image(args.image)
    model = model_from_args(args)
    layer = model.layer(args.layer)[0]
    target = check_targets(model, [args.target])[0] if args.target is not None else None
    mean_images = read_images(args.mean_from, args.mean_limit, "--mean-from") if args.mean_from else ([], [])
    probe_images = read_images(args.probes, args.mean_limit, "--probes") if args.probes else mean_images
    baseline = baseline_of(args, model, layer, mean_images[1])
    x = model.prepare(image)
    with console.status(f"channel Shapley values of {layer}"):
        result = channel_shapley(
            model,
            x,
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
    with console.status("patches where the top channels fire most"):
        probes = find_patches(args, model, result, x, probe_images)
    extra = {
        "mean_images": len(mean_images[0]) if args.baseline == "mean" else 0,
        "probe_images": probes.paths,
        "top_channels": top_channels(result, probes, args.top),
    }
    from cnnlens.probing.figures import channels_figure

    names = [Path(p).stem for p in probes.paths]
    figure = channels_figure(
        result,
        model.preprocessing.view(image),
        k=args.top,
        patches=probes.here,
        probes=probes.found,
        probe_views=probes.views,
        probe_names=names,
    )
    with output_lock(args.out):
        write_tables(result, args.out, extra)
        write_with(args.out / "channels.png", lambda f: figure.savefig(f, format="png", dpi=110))
    print_top(result, args.top)
    console.print(f"wrote {args.out / 'channels.csv'}, channels.json and channels.png")
    return 0
