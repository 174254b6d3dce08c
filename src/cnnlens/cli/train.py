"""``cnnlens train``: transfer learning on a folder of images, resumable."""

from __future__ import annotations

import argparse
import time
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from rich.progress import Progress
from rich.table import Table

from cnnlens.cli.common import add_command, console, error_console, progress_columns
from cnnlens.data.dataset import AUGMENTATIONS
from cnnlens.errors import DataWarning, InputError
from cnnlens.models.saliency_net import LOC_LOSSES
from cnnlens.outputs import output_lock
from cnnlens.training import FREEZE_POLICIES, Listener, TrainConfig, Trainer, TrainingWarning


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = add_command(
        sub,
        "train",
        run,
        model=True,
        help="train a classifier on a folder of images (transfer learning)",
        description="DATA is a folder with one subfolder per class, or a CSV manifest "
        "path,label[,mask][,split]. Writes RUN/best.pt (use it as --model RUN with every other "
        "command), last.pt, config.json, "
        "split.json, data.json, history.json and curves.png.",
    )
    p.add_argument("data", nargs="?", metavar="DATA", help="class-folder dataset or CSV manifest")
    p.add_argument(
        "--head",
        choices=("linear", "mlp64", "cnet", "spn"),
        help="new head: linear (default), mlp64 (Flatten-Dense 64-Dropout-Dense K, the usual VGG "
        "transfer-learning head), cnet (Fan et al.'s C-Net, 1024 -> K), "
        "spn (C-Net plus the saliency prediction net; same as --saliency-aware)",
    )
    sa = p.add_argument_group("saliency-aware training (Fan et al.)")
    sa.add_argument(
        "--saliency-aware",
        action="store_true",
        help="train C-Net and an SPN head whose map is supervised by the masks (--head spn)",
    )
    sa.add_argument(
        "--mask-ratio",
        type=float,
        default=1.0,
        help="fraction of the training images that keep their mask, drawn with --seed (default 1)",
    )
    sa.add_argument(
        "--loc-loss", choices=LOC_LOSSES, default="ce", help="SPN loss against the mask (default ce)"
    )
    sa.add_argument(
        "--lambda",
        dest="loc_weight",
        type=float,
        default=1.0,
        help="weight of the localisation loss: L = L_cls + lambda * L_loc (default 1)",
    )
    p.add_argument(
        "--freeze",
        default="auto",
        help=f"auto | {' | '.join(FREEZE_POLICIES)}; auto (default): features for linear and mlp64 "
        "heads; for cnet and spn (Fan et al.) last-stage with pretrained weights, none without, so the "
        "localisation loss reaches the F-Net",
    )
    p.add_argument("--epochs", type=int, default=10)
    p.add_argument(
        "--lr", type=float, default=1e-3, help="AdamW learning rate, cosine-annealed (default 1e-3)"
    )
    p.add_argument("--weight-decay", type=float, default=1e-4)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument(
        "--patience", type=int, help="stop after this many epochs without a better validation result"
    )
    p.add_argument("--class-weights", action="store_true", help="weight the loss by inverse class frequency")
    p.add_argument("--strict", action="store_true", help="stop on unreadable files instead of skipping them")
    p.add_argument("--masks", help="folder of masks matched to images by file name")
    p.add_argument(
        "--augment", choices=AUGMENTATIONS, default="standard", help="augmentation (default standard)"
    )
    p.add_argument("--image-size", type=int, help="input size (default: the model's)")
    p.add_argument("--split", default="0.8,0.1,0.1", help="train,val,test fractions (default 0.8,0.1,0.1)")
    p.add_argument("-o", "--out", type=Path, help="run folder")
    p.add_argument(
        "--resume", nargs="?", const=True, metavar="RUN", help="continue the run in RUN (or --out)"
    )
    p.add_argument(
        "--force",
        action="store_true",
        help="replace the run in an existing run folder: deletes only the files a run writes, and refuses "
        "if the folder holds anything else",
    )


def config_from_args(args: argparse.Namespace) -> TrainConfig:
    try:
        fractions = tuple(float(v) for v in args.split.split(","))
    except ValueError:
        raise InputError(f"--split expects three fractions like 0.8,0.1,0.1, got {args.split!r}") from None
    if len(fractions) != 3:
        raise InputError(f"--split expects three fractions like 0.8,0.1,0.1, got {args.split!r}")
    head = args.head or ("spn" if args.saliency_aware else "linear")
    if args.saliency_aware and head != "spn":
        raise InputError(f"--saliency-aware trains the spn head; it cannot be combined with --head {head}")
    if head != "spn":
        given = [
            flag
            for flag, value, default in (
                ("--mask-ratio", args.mask_ratio, 1.0),
                ("--loc-loss", args.loc_loss, "ce"),
                ("--lambda", args.loc_weight, 1.0),
            )
            if value != default
        ]
        if given:
            raise InputError(f"{', '.join(given)} only apply to saliency-aware training (--saliency-aware)")
    return TrainConfig(
        data=str(args.data),
        model=args.model,
        head=head,
        freeze=args.freeze,
        epochs=args.epochs,
        lr=args.lr,
        batch_size=args.batch_size,
        seed=args.seed,
        patience=args.patience,
        class_weights=args.class_weights,
        strict=args.strict,
        masks=args.masks,
        augment=args.augment,
        image_size=args.image_size,
        pretrained=not args.no_pretrained,
        weights=args.weights,
        weight_decay=args.weight_decay,
        split=(fractions[0], fractions[1], fractions[2]),
        device=args.device,
        mask_ratio=args.mask_ratio,
        loc_loss=args.loc_loss,
        loc_weight=args.loc_weight,
    )


@contextmanager
def shown_warnings() -> Iterator[None]:
    """Print the data and training warnings raised inside the block (skipped files, imbalance, a
    re-initialised head, a frozen F-Net) in yellow."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", DataWarning)
        warnings.simplefilter("always", TrainingWarning)
        try:
            yield
        finally:
            for w in caught:
                if issubclass(w.category, (DataWarning, TrainingWarning)):
                    error_console.print(f"[yellow]warning:[/] {w.message}", highlight=False)
                else:
                    warnings.warn_explicit(w.message, w.category, w.filename, w.lineno)


class ProgressListener(Listener):
    """Rich progress bars: one per epoch, with the running loss and accuracy."""

    def __init__(self, bar: Progress) -> None:
        self.bar = bar
        self.task: Any = None
        self.epochs = 0
        self.steps = 0

    def on_start(self, trainer: Trainer, steps_per_epoch: int) -> None:
        self.epochs, self.steps = trainer.config.epochs, steps_per_epoch

    def on_batch(self, epoch: int, step: int, loss: float, accuracy: float) -> None:
        if self.task is None:
            self.task = self.bar.add_task(f"epoch {epoch}/{self.epochs}", total=self.steps, stats="")
        self.bar.update(self.task, completed=step, stats=f"loss {loss:.4f} acc {accuracy:.3f}")

    def on_epoch(self, record: dict[str, Any]) -> None:
        if self.task is not None:
            self.bar.remove_task(self.task)
            self.task = None
        self.bar.console.print(
            f"epoch {record['epoch']:>3}: train loss {record['train_loss']:.4f} "
            f"acc {record['train_accuracy']:.3f} | val loss {record['val_loss']:.4f} "
            f"acc {record['val_accuracy']:.3f} | {record['seconds']:.1f} s",
            highlight=False,
        )


def _start(args: argparse.Namespace) -> Trainer:
    if args.resume is not None:
        folder = args.out if args.resume is True else Path(args.resume)
        if folder is None:
            raise InputError("--resume needs the run folder: --resume RUN (or --out RUN --resume)")
        if args.data is not None:
            error_console.print(f"[yellow]note:[/] resuming uses the settings of {folder / 'config.json'}")
        return Trainer.resume(folder)
    if args.data is None or args.out is None:
        raise InputError("give DATA and --out RUN (or --resume RUN to continue a run)")
    trainer = Trainer.create(config_from_args(args), args.out, force=args.force)
    if trainer.head_status == "continued":
        error_console.print(
            f"[yellow]note:[/] {args.model} already has a trained {trainer.config.head} head for these "
            "classes; training continues from it (its head is kept, not re-initialised)",
            highlight=False,
        )
    return trainer


def summary_table(trainer: Trainer, seconds: float) -> Table:
    table = Table(title=f"run {trainer.run}", title_justify="left", show_header=False)
    best = trainer.best or {}
    stopped = " (early stop)" if trainer.stopped_early() else ""
    rows: list[tuple[str, str]] = [
        ("classes", ", ".join(trainer.dataset.class_names)),
        ("images train/val/test", "/".join(str(len(trainer.parts[k])) for k in ("train", "val", "test"))),
        ("freeze", trainer.config.freeze),
        ("trainable parameters", f"{trainer.trainable:,}"),
        ("epochs", f"{trainer.epoch}{stopped}"),
        ("best epoch", str(best.get("epoch", "-"))),
        ("best val accuracy", f"{best.get('val_accuracy', float('nan')):.4f}"),
        ("time", f"{seconds:.1f} s"),
        ("model", str(trainer.run / "best.pt")),
    ]
    for k, v in rows:
        table.add_row(k, v)
    return table


def run(args: argparse.Namespace) -> int:
    folder = args.out if args.resume is None or args.resume is True else Path(args.resume)
    if folder is None:
        return _run(args)  # _start says what is missing
    with output_lock(folder, "--out" if args.resume is None else "--resume"):
        return _run(args)


def _run(args: argparse.Namespace) -> int:
    start = time.perf_counter()
    with shown_warnings():
        trainer = _start(args)
    if trainer.epoch >= trainer.config.epochs or trainer.stopped_early():
        console.print(f"{trainer.run} is already complete ({trainer.epoch} epochs)")
        return 0
    try:
        with Progress(*progress_columns(stats=True), console=console, transient=True) as bar:
            trainer.fit(ProgressListener(bar))
    except KeyboardInterrupt:
        error_console.print(
            f"{trainer.epoch} epoch(s) saved; continue with `cnnlens train --resume {trainer.run}`"
        )
        raise
    console.print(summary_table(trainer, time.perf_counter() - start))
    console.print(f"curves: {trainer.run / 'curves.png'}; evaluate with `cnnlens evaluate {trainer.run}`")
    return 0
