"""``cnnlens experiment``: the seeds' experiments as one command each."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from rich import box
from rich.progress import Progress, TaskID
from rich.table import Table

from cnnlens.cli.common import add_command, console, hold_out, parse_params, progress_columns, split_list
from cnnlens.cli.train import ProgressListener
from cnnlens.data.folders import read_data
from cnnlens.dataset_explain.layer_study import SECTION, LayerStudyConfig, fmt_share, run_layer_study
from cnnlens.errors import InputError
from cnnlens.models.registry import check_architecture
from cnnlens.models.saliency_net import LOC_LOSSES
from cnnlens.outputs import check_output_folder
from cnnlens.probing.block_shares import STUDY_METHODS
from cnnlens.report.sections import Figure, Section, render_sections, write_section
from cnnlens.report.sections import Table as PageTable
from cnnlens.training.experiment import (
    Backbone,
    ExperimentConfig,
    RunSpec,
    run_experiment,
)


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = add_command(
        sub,
        "experiment",
        help="run a published experiment end to end (saliency-aware training)",
        description="Experiments that train, evaluate and tabulate in one command.",
    )
    kinds = p.add_subparsers(dest="experiment", metavar="EXPERIMENT", required=True)
    sa = add_command(
        kinds,
        "saliency-aware",
        run,
        help="baseline vs saliency-aware training over backbones, mask ratios, losses and seeds (Fan et al.)",
        description="Trains every configuration (ratio 0: the baseline without SPN), scores each run on "
        "its test split and writes OUT/results.md, OUT/results.json and OUT/figure.png. Finished runs "
        "under OUT/runs are reused, so an interrupted experiment resumes.",
    )
    sa.add_argument(
        "data", metavar="DATA", help="class-folder dataset (with --masks) or a manifest with masks"
    )
    sa.add_argument("--masks", help="mask folder for a class-folder dataset")
    sa.add_argument(
        "--backbones",
        default="resnet18",
        help="comma-separated F-Nets; NAME:random for a randomly initialised one (default resnet18)",
    )
    sa.add_argument("--ratios", default="0,0.25,1", help="mask ratios; 0 is the baseline (default 0,0.25,1)")
    sa.add_argument(
        "--loc-losses", default="ce", help=f"comma-separated among {', '.join(LOC_LOSSES)} (default ce)"
    )
    sa.add_argument("--seeds", type=int, default=3, help="seeds per configuration (default 3)")
    sa.add_argument("--epochs", type=int, default=10)
    sa.add_argument("--lr", type=float, default=1e-3)
    sa.add_argument("--batch-size", type=int, default=16)
    sa.add_argument("--image-size", type=int, help="input size (default: each model's)")
    sa.add_argument(
        "--lambda", dest="loc_weight", type=float, default=1.0, help="weight of L_loc (default 1)"
    )
    sa.add_argument(
        "--freeze",
        default="auto",
        help="auto (default: pretrained backbones train their last stage, random ones train entirely, "
        "so the localisation loss reaches the F-Net), last-stage, features, none or until:LAYER",
    )
    sa.add_argument("--augment", default="standard", help="standard, noflip or none (default standard)")
    sa.add_argument("--threshold", type=float, default=0.5, help="threshold of the SPN map for its IoU")
    sa.add_argument("--figure-images", type=int, default=4, help="test images in the figure (default 4)")
    sa.add_argument("--device", help="torch device (default: cuda when available, else cpu)")
    sa.add_argument("-o", "--out", type=Path, required=True, help="output folder")
    hold_out(sa)
    add_layer_study(kinds)


def add_layer_study(kinds: argparse._SubParsersAction) -> None:
    ls = add_command(
        kinds,
        "layer-study",
        run_layer_study_command,
        help="share of attribution per feature block over a whole test split, per class (seed 000)",
        description="Trains a Flatten / Dense 64 / Dropout / Dense K head on a frozen backbone (or "
        "reuses a run given with --model RUN), explains every image of the run's test split at every "
        "feature block with a layer method (layer GradientSHAP by default) and reports each block's "
        "share of the absolute attribution per class with bootstrap confidence intervals: "
        "OUT/layer_study/shares.csv, shares.json, images.csv, blocks.png and a section of OUT/index.html.",
    )
    ls.add_argument(
        "data", metavar="DATA", help="class-folder dataset or manifest (the run's data with --model)"
    )
    ls.add_argument("--model", metavar="RUN", help="a training run folder to study instead of training one")
    ls.add_argument(
        "--backbone",
        default="efficientnet_lite0",
        help="model the head is trained on, features frozen (default efficientnet_lite0)",
    )
    ls.add_argument("--no-pretrained", action="store_true", help="a randomly initialised backbone")
    ls.add_argument(
        "--method",
        default="layer_gradshap",
        help=f"layer attribution method: {', '.join(STUDY_METHODS)} (default layer_gradshap)",
    )
    ls.add_argument("-p", "--param", action="append", metavar="KEY=VALUE", help="method parameter")
    ls.add_argument(
        "--layers",
        default="auto",
        help="blocks: auto (stages of ResNet/EfficientNet-style nets, else every conv; default), "
        "conv, stages, or comma-separated dotted names",
    )
    ls.add_argument("--target", default="pred", help="pred (each image's predicted class; default) or true")
    ls.add_argument("--epochs", type=int, default=10, help="training epochs of the head (default 10)")
    ls.add_argument("--lr", type=float, default=1e-3)
    ls.add_argument("--train-batch-size", type=int, default=32)
    ls.add_argument("--seed", type=int, default=0, help="seeds training, split and bootstrap (default 0)")
    ls.add_argument("--split", default="0.8,0.1,0.1", help="train,val,test fractions (default 0.8,0.1,0.1)")
    ls.add_argument("--batch-size", type=int, default=8, help="test images explained together (default 8)")
    ls.add_argument("--pass-batch", type=int, default=64, help="points per forward pass (default 64)")
    ls.add_argument("--confidence", type=float, default=0.95, help="level of the intervals (default 0.95)")
    ls.add_argument("--resamples", type=int, default=2000, help="bootstrap resamples (default 2000)")
    ls.add_argument("--workers", type=int, help="decoding processes (default: up to 4 from 64 images)")
    ls.add_argument("--device", help="torch device (default: cpu)")
    ls.add_argument("-o", "--out", type=Path, required=True, help="output folder")
    hold_out(ls)


def _floats(text: str, flag: str) -> tuple[float, ...]:
    try:
        return tuple(float(v) for v in split_list([text]))
    except ValueError:
        raise InputError(f"{flag} expects comma-separated numbers, got {text!r}") from None


def config_from_args(args: argparse.Namespace) -> ExperimentConfig:
    return ExperimentConfig(
        data=str(args.data),
        masks=args.masks,
        backbones=tuple(Backbone.parse(b) for b in split_list([args.backbones])),
        ratios=_floats(args.ratios, "--ratios"),
        loc_losses=tuple(split_list([args.loc_losses])),
        seeds=args.seeds,
        epochs=args.epochs,
        lr=args.lr,
        batch_size=args.batch_size,
        image_size=args.image_size,
        loc_weight=args.loc_weight,
        freeze=args.freeze,
        augment=args.augment,
        device=args.device,
        threshold=args.threshold,
        figure_images=args.figure_images,
    )


#: Metric columns of the terminal tables (all of results.md's): classification, then localisation.
CLASSIFICATION_COLUMNS = {
    "accuracy": "acc",
    "precision": "prec",
    "sensitivity": "sens",
    "specificity": "spec",
    "f1": "F1",
}
LOCALISATION_COLUMNS = {
    "spn_iou": "SPN IoU",
    "spn_dice": "SPN Dice",
    "gradcam_pointing": "CAM pointing",
    "gradcam_energy": "CAM energy",
}


def _cell(value: tuple[float, float | None] | None) -> str:
    if value is None:
        return "n/a"
    mean, std = value
    return f"{mean:.2f}" if std is None else f"{mean:.2f}±{std:.2f}"


def results_tables(rows: list[dict[str, Any]]) -> list[Table]:
    """The experiment's rows (see :meth:`ExperimentResult.table`) as two terminal tables."""
    tables = []
    for title, columns in (
        ("classification, per-class averages", CLASSIFICATION_COLUMNS),
        ("localisation against the masks", LOCALISATION_COLUMNS),
    ):
        table = Table(
            title=f"saliency-aware experiment: {title} (mean ± sample std over seeds, test split)",
            title_justify="left",
            box=box.SIMPLE_HEAD,
            pad_edge=False,
            collapse_padding=True,
        )
        for col in ("backbone", "mask\nratio", "loc\nloss", *columns.values()):
            table.add_column(col, overflow="fold")
        for row in rows:
            table.add_row(
                row["backbone"],
                f"{row['mask_ratio']:g}",
                "-" if row["loc_loss"] is None else str(row["loc_loss"]),
                *(_cell(row[k]) for k in columns),
            )
        tables.append(table)
    return tables


def run(args: argparse.Namespace) -> int:
    cfg = config_from_args(args)
    check_output_folder(args.out)
    for backbone in cfg.backbones:  # before any run folder is made
        if not Path(backbone.name).exists():
            check_architecture(backbone.name)
    read_data(cfg.data, masks=cfg.masks)  # a missing or malformed dataset: refused before any output

    def progress(i: int, n: int, spec: RunSpec, scores: dict[str, Any] | None) -> None:
        where = f"[{i + 1}/{n}] {spec.backbone.label} {spec.config_label} seed {spec.seed}"
        if scores is None:
            console.print(f"{where}: training", highlight=False)
        else:
            console.print(
                f"{where}: accuracy {scores['accuracy']:.3f}, F1 {scores['f1']:.3f}", highlight=False
            )

    result = run_experiment(cfg, args.out, on_run=progress)
    for table in results_tables(result.table()):
        console.print(table)
    console.print(
        "mask ratio 0: the baseline (C-Net, no SPN); > 0: saliency-aware (C-Net + SPN) with that share "
        "of the training masks; prec/sens/spec: precision, sensitivity, specificity; NAME:random: a "
        "randomly initialised F-Net",
        highlight=False,
    )
    console.print(
        f"wrote {args.out / 'results.md'}, {args.out / 'results.json'} and {args.out / 'figure.png'}"
    )
    return 0


def layer_study_config(args: argparse.Namespace) -> LayerStudyConfig:
    split = _floats(args.split, "--split")
    if len(split) != 3:
        raise InputError(f"--split expects three fractions like 0.8,0.1,0.1, got {args.split!r}")
    layers = split_list([args.layers])
    if not layers:
        raise InputError("--layers names no layer; use auto, conv, stages or dotted names")
    return LayerStudyConfig(
        data=str(args.data),
        run=args.model,
        backbone=args.backbone,
        pretrained=not args.no_pretrained,
        method=args.method,
        params=parse_params(args.param),
        layers=layers[0] if len(layers) == 1 and layers[0] in ("auto", "conv", "stages") else tuple(layers),
        target=args.target,
        epochs=args.epochs,
        lr=args.lr,
        train_batch=args.train_batch_size,
        seed=args.seed,
        split=(split[0], split[1], split[2]),
        batch_size=args.batch_size,
        pass_batch=args.pass_batch,
        confidence=args.confidence,
        n_resamples=args.resamples,
        device=args.device,
        workers=args.workers,
    )


def run_layer_study_command(args: argparse.Namespace) -> int:
    check_output_folder(args.out)
    cfg = layer_study_config(args)
    if cfg.run is None and not Path(cfg.backbone).exists():
        check_architecture(cfg.backbone)
    if args.lr <= 0:
        raise InputError(f"--lr must be positive, got {args.lr}")
    # one rich Progress with the columns of progress_bar: epochs of the head, then the test split
    with Progress(*progress_columns(stats=True), console=console) as bar:
        task: list[TaskID] = []

        def started(n: int) -> None:
            task.append(bar.add_task("explaining the test split", total=n, stats=cfg.method))

        result = run_layer_study(
            cfg,
            args.out,
            listener=ProgressListener(bar),
            on_start=started,
            advance=lambda n: bar.update(task[0], advance=n),
        )
    write_layer_study_section(args.out, result)
    console.print(layer_study_table(result))
    console.print(
        f"test accuracy {result['accuracy']:.3f} on {result['images']} images; shares of "
        f"|{result['method']}| per block, mean [{round(100 * result['confidence'])}% bootstrap CI]",
        highlight=False,
    )
    console.print(f"wrote {args.out / SECTION} and {args.out / 'index.html'}")
    return 1 if result["failed"] else 0


def layer_study_table(result: dict[str, Any]) -> Table:
    classes = list(dict.fromkeys(r["class"] for r in result["rows"]))
    table = Table(title="share of attribution per block", title_justify="left", box=box.SIMPLE_HEAD)
    table.add_column("block")
    table.add_column("units", justify="right")
    for name in classes:
        table.add_column(f"{name} (n={next(r['images'] for r in result['rows'] if r['class'] == name)})")
    at = {(r["class"], r["block"]): r for r in result["rows"]}
    for block, units in zip(result["blocks"], result["units"], strict=True):
        cells = (fmt_share(at[c, block]) if (c, block) in at else "" for c in classes)
        table.add_row(block, f"{units:,}", *cells)
    return table


def write_layer_study_section(out: Path, result: dict[str, Any]) -> Path:
    level = round(100 * result["confidence"])
    rows = [
        [
            r["class"],
            r["block"],
            r["units"],
            r["images"],
            r["share"],
            r["ci_low"],
            r["ci_high"],
            r["mean_signed"],
        ]
        for r in result["rows"]
    ]
    section = Section(
        key=SECTION,
        title="Layer study: share of attribution per feature block",
        text=f"{result['method']} at every feature block of {result['run']} over the {result['images']} "
        f"images of its test split (test accuracy {result['accuracy']:.3f}). A block's share is the sum "
        "of the absolute attributions of its units over the sum for all blocks, per image; the table "
        f"gives the mean per explained class with its {level}% percentile-bootstrap interval over "
        "images. The signed sum is about the same at every block for a complete method (each block is "
        "a full cut through the network), so it checks completeness rather than ranking blocks.",
        figures=[Figure("blocks.png", "share of |attribution| per block and class, with error bars")],
        tables=[
            PageTable(
                ["class", "block", "units", "images", "share", "CI low", "CI high", "mean signed sum"],
                rows,
                "per class and block",
            )
        ],
    )
    write_section(out, section)
    return render_sections(out, "cnnlens experiment layer-study")
