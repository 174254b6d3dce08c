"""``cnnlens data``: datasets that work offline (synthetic shapes, and datasets shipped in packages)."""

from __future__ import annotations

import argparse
from pathlib import Path

from cnnlens.cli.common import add_command, console
from cnnlens.data.concepts import CONCEPT_SHAPES, ConceptConfig, concept_kinds, generate_concepts
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
    c = add_command(
        actions,
        "concepts",
        run_concepts,
        help="a concept set for `cnnlens probe dissect`: shapes, colours and textures with exact masks",
        description="One shape (circle, triangle, cross, square) in one colour (red, green, blue, yellow) "
        "per image, on grey with a textured rectangle (stripes, checker, dots) in 80%% of the images. "
        "Writes DIR/images/<shape>/ (class folders), DIR/concepts/<concept>/<stem>.png (the exact mask of "
        "each concept an image shows), DIR/masks/, DIR/manifest.csv and DIR/concepts.json.",
    )
    c.add_argument("-o", "--out", type=Path, required=True, help="new output folder")
    c.add_argument("--per-class", type=int, default=50, help="images per shape (default 50)")
    c.add_argument("--size", type=int, default=64, help="image side in pixels (default 64)")
    c.add_argument("--seed", type=int, default=0)
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


def run_concepts(args: argparse.Namespace) -> int:
    cfg = ConceptConfig(args.per_class, args.size, args.seed)
    with console.status("drawing concepts"):
        manifest = generate_concepts(args.out, cfg)
    kinds = concept_kinds()
    console.print(
        f"wrote {cfg.per_class * len(CONCEPT_SHAPES)} images with masks of {len(kinds)} concepts "
        f"({', '.join(kinds)}) under {args.out}; dissect with --concepts {Path(args.out) / 'concepts'} "
        f"(train on {manifest})"
    )
    return 0


def run_export(args: argparse.Namespace) -> int:
    with console.status(f"exporting {args.name}"):
        counts = export_dataset(args.name, args.out)
    listing = ", ".join(f"{k} {v}" for k, v in counts.items())
    console.print(f"wrote {sum(counts.values())} images to {args.out} ({listing})")
    return 0
