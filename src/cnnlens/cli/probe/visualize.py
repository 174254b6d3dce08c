"""``cnnlens probe visualize``: feature visualisation by activation maximisation."""

from __future__ import annotations

import argparse
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial

import torch
from PIL import Image

from cnnlens.attribution.core.targets import class_index
from cnnlens.cli.common import add_command, console, model_from_args, progress_bar
from cnnlens.cli.probe._units import add_out, feature_layer, parse_units, publish, save_png
from cnnlens.errors import InputError
from cnnlens.models.loaded import LoadedModel
from cnnlens.outputs import check_output_folder, output_folder, subfolder, write_json, write_with
from cnnlens.probing.unit_figures import visualization_figure
from cnnlens.probing.visualization import Visualization, visualize
from cnnlens.report.sections import Figure, Section

HELP = "activation maximisation: an image optimised to excite a unit or a class"
DESCRIPTION = (
    "Feature visualisation (Olah et al. 2017): an image, parameterised by its 1/f-scaled, colour-"
    "decorrelated Fourier coefficients, optimised with Adam to maximise a unit's mean activation "
    "(--layer and --unit; --neuron: the unit at the centre of the map) or a class logit (--class), seen "
    "through random padding, jitter, scaling and rotation at every step. Deterministic with --seed. "
    "Writes OUT/visualize/<objective>.png, visualize.png (images and objective curves), "
    "visualize.json and a section of OUT/index.html."
)


def add_parser(tools: argparse._SubParsersAction) -> None:
    p = add_command(tools, "visualize", run, model=True, help=HELP, description=DESCRIPTION)
    p.add_argument("--layer", help="dotted layer name (with --unit)")
    what = p.add_mutually_exclusive_group(required=True)
    what.add_argument("--unit", help="unit(s) of --layer: 3, 3,7 or 0-5")
    what.add_argument("--class", dest="target", help="class index or name")
    p.add_argument(
        "--neuron", action="store_true", help="maximise the unit at the map's centre, not its mean"
    )
    p.add_argument("--steps", type=int, default=256, help="optimisation steps (default 256)")
    p.add_argument("--size", type=int, help="image side in pixels (default: the model's input size)")
    p.add_argument("--lr", type=float, default=0.05, help="Adam's learning rate (default 0.05)")
    p.add_argument("--seed", type=int, default=0, help="seed of the image and transformations (default 0)")
    add_out(p)


@dataclass(frozen=True)
class Job:
    """One objective: a unit of a layer, or a class."""

    layer: str | None = None
    unit: int | None = None
    target: int | None = None

    @property
    def label(self) -> str:
        return f"unit {self.unit}" if self.unit is not None else f"class {self.target}"


def objectives(model: LoadedModel, args: argparse.Namespace) -> list[Job]:
    if args.target is not None:
        if args.layer is not None:
            raise InputError("--layer goes with --unit, not with --class")
        with torch.no_grad():
            size = model.preprocessing.input_size
            classes = int(
                model.module(torch.zeros(1, model.preprocessing.channels, *size, device=model.device)).shape[
                    1
                ]
            )
        return [Job(target=class_index(args.target, model.class_names, classes))]
    if args.layer is None:
        raise InputError("--unit needs --layer (a dotted layer name; see `cnnlens layers`)")
    name, units = feature_layer(model, args.layer)
    return [Job(name, u) for u in parse_units(args.unit, units, name)]


def _step(advance: Callable[..., None], label: str, value: float) -> None:
    advance(f"{label}: {value:.3g}")


def file_name(result: Visualization, index: int) -> str:
    safe = "".join(c if c.isalnum() or c in "-_" else "_" for c in result.objective)
    return f"{index:02d}_{safe}.png"[:120]


def run(args: argparse.Namespace) -> int:
    check_output_folder(args.out)
    model = model_from_args(args)
    todo = objectives(model, args)
    results: list[Visualization] = []
    with progress_bar("visualize", len(todo) * max(args.steps, 0)) as advance:
        for job in todo:
            results.append(
                visualize(
                    model,
                    layer=job.layer,
                    unit=job.unit,
                    target=job.target,
                    steps=args.steps,
                    size=args.size,
                    seed=args.seed,
                    lr=args.lr,
                    neuron=args.neuron,
                    progress=partial(_step, advance, job.label),
                )
            )
    folder = subfolder(output_folder(args.out), "visualize")
    names = []
    for i, r in enumerate(results):
        arr = (r.image.clamp(0, 1) * 255 + 0.5).byte()
        img = Image.fromarray(arr[0].numpy() if arr.shape[0] == 1 else arr.permute(1, 2, 0).numpy())
        names.append(file_name(r, i))
        write_with(folder / names[-1], partial(img.save, format="PNG"))
    save_png(folder, "visualize.png", visualization_figure(results), dpi=110)
    write_json(
        folder / "visualize.json",
        {
            "model": model.name,
            "results": [{**r.to_dict(), "file": n} for r, n in zip(results, names, strict=True)],
        },
    )
    lines = [f"{r.objective}: {r.curve[0]:.3g} -> {r.curve[-1]:.3g}" for r in results]
    page = publish(
        args.out,
        Section(
            key="visualize",
            title="Feature visualisation",
            text=(
                f"Activation maximisation of {model.name}: {args.steps} steps of Adam (lr {args.lr:g}, seed "
                f"{args.seed}) on a 1/f Fourier, colour-decorrelated image seen through random jitter, "
                "scaling and rotation. Objective start -> end: " + "; ".join(lines) + "."
            ),
            figures=[Figure("visualize.png", "optimised images and their objective curves")],
            order=70,
        ),
    )
    for line in lines:
        console.print(line)
    console.print(f"wrote {len(results)} images, {folder / 'visualize.png'} and {page}")
    return 0
