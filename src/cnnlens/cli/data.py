"""``cnnlens data``: datasets that work offline (synthetic shapes, and datasets shipped in packages)."""

from __future__ import annotations

import argparse
from pathlib import Path

from cnnlens.cli.common import add_command, console
from cnnlens.data.export import EXPORTS, export_dataset
from cnnlens.data.synthetic import SHAPES, SynthConfig, generate

SYNTH_HELP = "shapes on cluttered backgrounds, with exact masks and an optional spurious cue"
SYNTH_DESCRIPTION = (
    f"Classes in order: {', '.join(SHAPES)}. Writes DIR/manifest.csv "
    "(path,label,mask,split,cue; train on it to keep the split), DIR/images/<class>/, DIR/masks/ "
    "and DIR/synth.json."
)


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = add_command(sub, "data", help="generate or export datasets that work offline")
    actions = p.add_subparsers(dest="action", metavar="ACTION", required=True)
    s = add_command(actions, "synth", run_synth, help=SYNTH_HELP, description=SYNTH_DESCRIPTION)
    s.add_argument("-o", "--out", type=Path, required=True, help="new output folder")
    s.add_argument(
        "--classes", type=int, default=3, help=f"number of shape classes, 2-{len(SHAPES)} (default 3)"
    )
    s.add_argument("--per-class", type=int, default=100, help="images per class (default 100)")
    s.add_argument("--size", type=int, default=64, help="image side in pixels (default 64)")
    s.add_argument(
        "--spurious",
        type=float,
        help="fraction of TRAINING images whose background tint matches their class (default: no cue)",
    )
    s.add_argument(
        "--clutter", type=float, default=1.0, help="density of background lines and dots (default 1)"
    )
    s.add_argument("--seed", type=int, default=0)
    e = add_command(
        actions, "export", run_export, help=f"write {', '.join(EXPORTS)} as class folders of PNG files"
    )
    e.add_argument("name", choices=list(EXPORTS))
    e.add_argument("-o", "--out", type=Path, required=True, help="new output folder")


def run_synth(args: argparse.Namespace) -> int:
    cfg = SynthConfig(args.classes, args.per_class, args.size, args.spurious, args.seed, args.clutter)
    with console.status("drawing shapes"):
        manifest = generate(args.out, cfg)
    console.print(f"wrote {cfg.classes * cfg.per_class} images and masks; train on {manifest}")
    return 0


def run_export(args: argparse.Namespace) -> int:
    with console.status(f"exporting {args.name}"):
        counts = export_dataset(args.name, args.out)
    listing = ", ".join(f"{k} {v}" for k, v in counts.items())
    console.print(f"wrote {sum(counts.values())} images to {args.out} ({listing})")
    return 0
