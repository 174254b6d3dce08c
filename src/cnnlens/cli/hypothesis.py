"""``cnnlens hypothesis``: does the model use an object's parts, their arrangement, its shape or its
texture? One experiment per sub-command on one image (``all`` runs the four), and the dataset-level
shape-bias score (``shape-bias``).

Each writes ``OUT/<experiment>/variants.png`` (and other figures), ``OUT/<experiment>/result.json``
and its section of ``OUT/index.html`` (:mod:`cnnlens.report.sections`).
"""

from __future__ import annotations

import argparse
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np
from rich.table import Table as RichTable

from cnnlens.cli.common import add_command, console, hold_every_out, model_from_args, progress_bar, split_list
from cnnlens.data.images import load_image
from cnnlens.data.masks import sample_mask
from cnnlens.errors import InputError
from cnnlens.hypothesis import variants as V
from cnnlens.hypothesis.experiments import (
    VIEWS,
    ExperimentResult,
    Prediction,
    mask_view,
    model_view,
    parts_experiment,
    shape_experiment,
    shuffle_experiment,
    texture_experiment,
)
from cnnlens.hypothesis.figures import experiment_figure, shape_bias_figure, shuffle_plot
from cnnlens.hypothesis.shape_bias import (
    SOURCE_KINDS,
    TEXTURE_NAMES,
    ShapeBiasResult,
    load_texture,
    shape_bias,
)
from cnnlens.models import LoadedModel
from cnnlens.outputs import check_output_folder, output_folder, subfolder, write_bytes, write_json
from cnnlens.report.sections import Figure, Section, Table, render_sections, write_section
from cnnlens.validation import check_positive_int

EXPERIMENTS = ("parts", "shuffle", "shape", "texture")
ORDER = {name: 10 * (k + 1) for k, name in enumerate([*EXPERIMENTS, "shape-bias"])}
PAGE_TITLE = "cnnlens hypothesis experiments"
#: A part mask with more distinct colours than this is an object mask (e.g. an anti-aliased or JPEG
#: mask), not a label image.
MAX_LABELS = 64


# ------------------------------------------------------------------------------------- arguments


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = add_command(
        sub,
        "hypothesis",
        help="does the model use parts, their arrangement, shape or texture? (and the shape-bias score)",
        description="Experiments that test what a classifier's decision rests on. Each writes PNG + JSON "
        "under OUT/<experiment>/ and a section of OUT/index.html.",
    )
    tools = p.add_subparsers(dest="experiment", metavar="EXPERIMENT", required=True)
    parts = _image_command(tools, "parts", "occlude each part in turn: which part is needed?")
    _part_arguments(parts)
    shuffle = _image_command(tools, "shuffle", "jigsaw shuffles: does the spatial arrangement matter?")
    _shuffle_arguments(shuffle)
    shuffle.add_argument("--mask", help="object mask (file or sample:NAME), for --bbox")
    shape = _image_command(
        tools, "shape", "silhouette, outline, neutral background: does shape alone carry the class?"
    )
    _mask_argument(shape, required=True)
    _shape_arguments(shape)
    texture = _image_command(tools, "texture", "the object filled with another texture: shape or texture?")
    _mask_argument(texture, required=True)
    _texture_arguments(texture)
    every = _image_command(
        tools, "all", "the four experiments on one page (parts use --grid cells of the object)"
    )
    _mask_argument(every, required=True)
    _part_arguments(every, with_mask=False, default_grid=3)
    _shuffle_arguments(every, grid_flag="--shuffle-grid")
    _shape_arguments(every)
    _texture_arguments(every, default="gravel")
    bias = add_command(
        tools,
        "shape-bias",
        _run_shape_bias,
        model=True,
        help="the shape-bias score (Geirhos et al. 2019) over an offline cue-conflict set",
        description="Fill the silhouettes of the sample photos (hand-drawn masks) and of the synthetic "
        "shapes with textures from skimage/scikit-learn images on a grey background; the shape class is "
        "the model's top-1 on the shape source, the texture class its top-1 on the texture alone. Prints "
        "shape / (shape + texture) decisions with a Wilson 95%% interval.",
    )
    bias.add_argument("--n", type=int, default=200, help="cue-conflict images (default 200)")
    hold_every_out(tools)
    bias.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    bias.add_argument(
        "--sources",
        default=",".join(SOURCE_KINDS),
        help=f"shape sources: {', '.join(SOURCE_KINDS)} (default both)",
    )
    bias.add_argument("--textures", default=",".join(TEXTURE_NAMES), help="texture sources (default all)")
    bias.add_argument("--batch", type=int, default=32, help="items per forward pass (default 32)")
    bias.add_argument("-o", "--out", required=True, type=Path, help="output folder")


def _image_command(tools: argparse._SubParsersAction, name: str, help: str) -> argparse.ArgumentParser:
    p = add_command(tools, name, _run, image="one", model=True, help=help, description=help)
    p.add_argument("-t", "--target", help="class index or name to follow (default: the top-1)")
    p.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    p.add_argument(
        "--view",
        choices=VIEWS,
        default="pad",
        help="pad: the whole photo on a grey square, so the object keeps its silhouette (default); "
        "crop: the model's own resize and centre crop",
    )
    p.add_argument("-o", "--out", required=True, type=Path, help="output folder")
    return p


def _mask_argument(p: argparse.ArgumentParser, required: bool) -> None:
    p.add_argument(
        "--mask",
        required=required,
        help="object mask: an image file of the photo's size (non-zero = object) or sample:NAME (the "
        "hand-drawn mask of a sample photo, e.g. sample:chelsea)",
    )


def _part_arguments(
    p: argparse.ArgumentParser, with_mask: bool = True, default_grid: int | None = None
) -> None:
    if with_mask:
        p.add_argument(
            "--mask",
            help="parts: a label image (one colour per part, at most 64), or an object mask: its connected "
            "components, "
            "or with --grid/--superpixels the cells inside the object (file or sample:NAME)",
        )
    group = p.add_mutually_exclusive_group()
    group.add_argument(
        "--boxes", action="append", metavar="L,T,R,B", help="a part as a box in photo pixels (repeatable)"
    )
    group.add_argument("--grid", type=int, default=default_grid, help="N x N cells as parts")
    group.add_argument("--superpixels", type=int, metavar="N", help="about N SLIC superpixels as parts")
    p.add_argument("--fill", choices=V.FILLS, default="mean", help="what replaces a part (default mean)")
    p.add_argument("--keep-one", action="store_true", help="also show each part alone, the rest occluded")


def _shuffle_arguments(p: argparse.ArgumentParser, grid_flag: str = "--grid") -> None:
    p.add_argument(grid_flag, dest="grids", default="2,3,4", help="grid sizes (default 2,3,4)")
    p.add_argument("--n", type=int, default=20, help="shuffles per grid size (default 20)")
    p.add_argument(
        "--bbox", action="store_true", help="shuffle only the object's bounding box (needs --mask)"
    )


def _shape_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--edge-width", type=int, default=3, help="outline width in pixels (default 3)")


def _texture_arguments(p: argparse.ArgumentParser, default: str | None = None) -> None:
    names = ", ".join(TEXTURE_NAMES)
    p.add_argument(
        "--texture",
        required=default is None,
        default=default,
        help=f"texture image file, or one of {names}" + (f" (default {default})" if default else ""),
    )
    p.add_argument("--texture-mode", choices=V.TEXTURE_MODES, default="tile", help="fill mode (default tile)")
    p.add_argument(
        "--patch", type=int, help="side of the tiled/sampled patch (default a third of the texture)"
    )


# ----------------------------------------------------------------------------------------- inputs


def read_mask(spec: str, size: tuple[int, int], labels: bool = False) -> np.ndarray:
    """A mask for a photo of ``size`` (w, h): a file (non-zero = object; ``labels``: one int per
    colour) or ``sample:NAME``. Raises :class:`InputError` on a wrong size or an empty mask."""
    if spec.startswith("sample:"):
        arr: np.ndarray = sample_mask(spec.removeprefix("sample:"))
    else:
        rgb = np.asarray(load_image(spec)).astype(np.int64)
        arr = rgb[..., 0] * 65536 + rgb[..., 1] * 256 + rgb[..., 2]
        arr = arr if labels else arr != 0
    if arr.shape != (size[1], size[0]):
        raise InputError(
            f"--mask {spec}: {arr.shape[1]}x{arr.shape[0]} pixels, the image {size[0]}x{size[1]}; "
            "the mask must be drawn on the same image"
        )
    if not arr.any():
        raise InputError(f"--mask {spec} is empty (every pixel is zero); expected the object as non-zero")
    return arr


def _boxes_to_view(
    model: LoadedModel, boxes: list[str], size: tuple[int, int], view: str
) -> list[np.ndarray]:
    parts = []
    for box in split_boxes(boxes):
        part = V.box_parts((size[1], size[0]), [box])[0]
        parts.append(mask_view(model, part, view))
    return parts


def split_boxes(values: list[str]) -> list[tuple[int, int, int, int]]:
    out = []
    for value in values:
        try:
            nums = tuple(int(v) for v in value.split(","))
        except ValueError:
            nums = ()
        if len(nums) != 4:
            raise InputError(f"--boxes {value!r}: expected LEFT,TOP,RIGHT,BOTTOM (4 integers)")
        out.append((nums[0], nums[1], nums[2], nums[3]))
    return out


def make_parts(
    model: LoadedModel, args: argparse.Namespace, view: np.ndarray, size: tuple[int, int]
) -> list[np.ndarray]:
    """The parts in the model's view from --mask / --boxes / --grid / --superpixels."""
    if args.grid is not None and args.grid < 2:
        raise InputError(f"--grid must be at least 2 (cells per side), got {args.grid}")
    if args.superpixels is not None and args.superpixels < 2:
        raise InputError(f"--superpixels must be at least 2, got {args.superpixels}")
    if args.boxes:
        parts = _boxes_to_view(model, args.boxes, size, args.view)
        return [V.check_mask(p, view.shape, "box part (after the model's crop)") for p in parts]
    obj = None
    if args.mask:
        raw = read_mask(args.mask, size, labels=args.grid is None and args.superpixels is None)
        values = np.unique(raw[raw != 0]) if raw.dtype != bool else np.array([1])
        if 1 < len(values) <= MAX_LABELS:
            labels = np.zeros(view.shape[:2], dtype=np.int64)
            for k, v in enumerate(values):
                labels[mask_view(model, raw == v, args.view)] = k + 1
            return V.label_parts(labels)
        obj = V.check_mask(mask_view(model, raw != 0, args.view), view.shape, f"--mask {args.mask}")
    if args.grid is not None:
        cells = V.grid_parts(view.shape, args.grid)
    elif args.superpixels is not None:
        cells = V.superpixel_parts(view, args.superpixels)
    elif obj is not None:
        return V.label_parts(obj.astype(np.int64))
    else:
        raise InputError("give the parts: --mask, --boxes, --grid N or --superpixels N")
    return cells if obj is None else V.within(cells, obj, min_pixels=max(16, int(0.01 * obj.sum())))


def parse_grids(text: str) -> list[int]:
    grids = []
    for g in split_list([text]):
        try:
            grids.append(int(g))
        except ValueError:
            raise InputError(f"--grid {text!r}: expected comma-separated integers such as 2,3,4") from None
    if not grids or any(g < 2 for g in grids):
        raise InputError(f"--grid {text!r}: every grid size must be at least 2 (tiles per side)")
    return grids


def read_texture(spec: str) -> np.ndarray:
    if Path(spec).exists() or spec not in TEXTURE_NAMES:
        return np.asarray(load_image(spec))
    return load_texture(spec)


def check_common(args: argparse.Namespace) -> None:
    check_output_folder(args.out)
    for flag in ("n", "edge_width", "patch", "batch"):
        value = getattr(args, flag, None)
        if value is not None:
            check_positive_int(f"--{flag.replace('_', '-')}", value)


# ------------------------------------------------------------------------------------ run + output


def run_experiments(
    args: argparse.Namespace, which: tuple[str, ...]
) -> tuple[list[ExperimentResult], np.ndarray]:
    """Read the inputs, check them all, then run each experiment in ``which``."""
    check_common(args)
    grids = parse_grids(args.grids) if "shuffle" in which else []
    if "shuffle" in which and args.bbox and not args.mask:
        raise InputError("--bbox shuffles the object's bounding box: give --mask too")
    photo = load_image(args.image)
    texture = read_texture(args.texture) if "texture" in which else None
    model = model_from_args(args)
    view = model_view(model, photo, args.view)
    obj = None
    if args.mask and (set(which) & {"shape", "texture"} or getattr(args, "bbox", False)):
        raw = read_mask(args.mask, photo.size)
        obj = V.check_mask(
            mask_view(model, raw != 0, args.view),
            view.shape,
            f"--mask {args.mask} in the model's view",
        )
    parts = make_parts(model, args, view, photo.size) if "parts" in which else []
    results = []
    with console.status("running the experiments") as status:
        for name in which:
            status.update(f"{name}: scoring the variants")
            if name == "parts":
                results.append(
                    parts_experiment(
                        model,
                        view,
                        parts,
                        fill=args.fill,
                        keep_one=args.keep_one,
                        seed=args.seed,
                        target=args.target,
                    )
                )
            elif name == "shuffle":
                box = V.bounding_box(obj) if args.bbox and obj is not None else None
                results.append(
                    shuffle_experiment(
                        model, view, grids=grids, n=args.n, seed=args.seed, box=box, target=args.target
                    )
                )
            elif name == "shape" and obj is not None:
                results.append(
                    shape_experiment(model, view, obj, edge_width=args.edge_width, target=args.target)
                )
            elif name == "texture" and obj is not None and texture is not None:
                results.append(
                    texture_experiment(
                        model,
                        view,
                        obj,
                        texture,
                        mode=args.texture_mode,
                        patch=args.patch,
                        seed=args.seed,
                        target=args.target,
                    )
                )
    return results, view


def _run(args: argparse.Namespace) -> int:
    which = EXPERIMENTS if args.experiment == "all" else (args.experiment,)
    results, view = run_experiments(args, which)
    output_folder(args.out)
    for r in results:
        print_result(r)
        write_experiment(args.out, r, view, args)
    page = render_sections(args.out, PAGE_TITLE, f"Image: {args.image}; model: {args.model}.")
    console.print(f"wrote {page}")
    return 0


def _fmt(preds: list[Prediction]) -> str:
    return ", ".join(f"{p.name} {100 * p.prob:.1f}%" for p in preds)


def print_result(r: ExperimentResult) -> None:
    console.print(f"\n[bold]{r.experiment}[/]: target {r.target}")
    console.print(f"  before: {_fmt(r.before)}", highlight=False)
    if r.experiment == "shuffle":
        table = RichTable(title="after (per grid size)", title_justify="left")
        for col in ("grid", "top-1 rate", "mean", "min", "max", "most common top-1"):
            table.add_column(col)
        for g, vs in r.groups().items():
            s = r.summary["per_grid"][g.removeprefix("grid ")]
            common = Counter(v.top[0].name for v in vs).most_common(1)[0]
            table.add_row(
                g,
                f"{100 * s['top1_rate']:.0f}%",
                *(f"{100 * s[k]:.1f}%" for k in ("mean", "min", "max")),
                f"{common[0]} ({common[1]}/{len(vs)})",
            )
    else:
        table = RichTable(title="after", title_justify="left")
        for col in ("variant", "target %", "top-1?", "top-5"):
            table.add_column(col)
        for v in r.variants:
            table.add_row(
                v.label, f"{100 * v.target_prob:.1f}", "yes" if v.target_top1 else "no", _fmt(v.top)
            )
    console.print(table)
    console.print(f"[bold]verdict:[/] {r.verdict}", highlight=False)


def _rows(r: ExperimentResult) -> Table:
    if r.experiment == "shuffle":
        rows: list[list[Any]] = [
            [f"{g}x{g}", s["top1_rate"], s["mean"], s["median"], s["min"], s["max"]]
            for g, s in r.summary["per_grid"].items()
        ]
        return Table(
            ["grid", "top-1 rate", "mean", "median", "min", "max"],
            rows,
            f"p({r.target.name}) over {r.summary['n']} shuffles per grid",
        )
    return Table(
        ["variant", f"p({r.target.name})", "top-1?", "top-5"],
        [[v.label, v.target_prob, "yes" if v.target_top1 else "no", _fmt(v.top)] for v in r.variants],
        f"before: {_fmt(r.before)}",
    )


TITLES = {
    "parts": "Parts: is any single part needed?",
    "shuffle": "Arrangement: do jigsaw shuffles change the decision?",
    "shape": "Shape: does the class survive without texture?",
    "texture": "Texture: which cue wins in a cue conflict?",
}


def write_experiment(out: Path, r: ExperimentResult, view: np.ndarray, args: argparse.Namespace) -> None:
    folder = subfolder(out, r.experiment)
    write_bytes(folder / "variants.png", experiment_figure(r, view))
    figures = [
        Figure("variants.png", "the unchanged image and its variants (top-1, and the target's probability)")
    ]
    if r.experiment == "shuffle":
        write_bytes(folder / "confidence.png", shuffle_plot(r))
        figures.append(Figure("confidence.png", f"p({r.target.name}) of each shuffle per grid size"))
    data = r.to_dict() | {"image": str(args.image), "model": args.model, "seed": args.seed}
    write_json(folder / "result.json", data)
    write_section(
        out,
        Section(
            key=r.experiment,
            title=TITLES[r.experiment],
            verdict=r.verdict,
            figures=figures,
            tables=[_rows(r)],
            order=ORDER[r.experiment],
            text=f"Image {args.image}, target {r.target}.",
        ),
    )


def _run_shape_bias(args: argparse.Namespace) -> int:
    check_common(args)
    kinds = tuple(split_list([args.sources]))
    textures = tuple(split_list([args.textures]))
    bad = [t for t in textures if t not in TEXTURE_NAMES]
    if bad or not textures:
        raise InputError(
            f"--textures: unknown {', '.join(bad) or '(none given)'}; choose from {', '.join(TEXTURE_NAMES)}"
        )
    model = model_from_args(args)
    with progress_bar("cue-conflict images", args.n) as advance:
        result = shape_bias(
            model,
            n=args.n,
            seed=args.seed,
            kinds=kinds,
            textures=textures,
            batch=args.batch,
            keep_images=24,
            progress=lambda k: advance(n=k),
        )
    output_folder(args.out)
    print_shape_bias(result)
    write_shape_bias(args.out, result)
    console.print(f"wrote {render_sections(args.out, PAGE_TITLE, f'Model: {args.model}.')}")
    return 0


def print_shape_bias(r: ShapeBiasResult) -> None:
    table = RichTable(title="per shape source", title_justify="left")
    for col in ("shape source", "shape", "texture", "other", "shape bias"):
        table.add_column(col)
    for row in r.per_source():
        table.add_row(*(f"{c:.2f}" if isinstance(c, float) else str(c) for c in row))
    console.print(table)
    console.print(f"[bold]verdict:[/] {r.verdict()}", highlight=False)


def write_shape_bias(out: Path, r: ShapeBiasResult) -> None:
    folder = subfolder(out, "shape-bias")
    write_json(folder / "result.json", r.to_dict())
    figures = []
    if r.images:
        write_bytes(folder / "examples.png", shape_bias_figure(r))
        figures.append(
            Figure("examples.png", "the first cue-conflict images: shape class / texture class -> decision")
        )
    write_section(
        out,
        Section(
            key="shape-bias",
            title="Shape bias over a cue-conflict set (Geirhos et al. 2019)",
            verdict=r.verdict(),
            figures=figures,
            tables=[Table(["shape source", "shape", "texture", "other", "shape bias"], r.per_source())],
            order=ORDER["shape-bias"],
            text=f"{r.n} cue-conflict images, seed {r.seed}, model {r.model}. Shape class: the model's "
            "top-1 on the shape source; texture class: its top-1 on the texture alone; shape bias = "
            "shape / (shape + texture) decisions, Wilson 95% interval.",
        ),
    )
