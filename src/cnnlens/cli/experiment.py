"""``cnnlens experiment``: the seeds' experiments as one command each."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from rich import box
from rich.table import Table

from cnnlens.cli.common import add_command, console, split_list
from cnnlens.data.folders import read_data
from cnnlens.errors import InputError
from cnnlens.models.registry import check_architecture
from cnnlens.models.saliency_net import LOC_LOSSES
from cnnlens.outputs import check_output_folder
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
