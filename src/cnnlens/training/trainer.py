"""Transfer learning on a small image dataset, resumable to the exact same result.

A run folder holds::

    config.json   the TrainConfig          split.json   the images of each split
    data.json     classes, counts, skipped files
    last.pt       the latest epoch: a cnnlens checkpoint plus optimizer, scheduler and history
    best.pt       the best epoch by validation accuracy (ties: lower validation classification
                  loss, never the localisation loss of saliency-aware runs), a cnnlens checkpoint
    history.json  per-epoch loss/accuracy      curves.png   the training curves

Determinism: every source of randomness of an epoch (shuffling, augmentation, dropout) is seeded
from ``(seed, epoch)`` at the start of that epoch, so an epoch does not depend on how the run got
there; with the weights, optimizer and scheduler state of ``last.pt``, ``resume`` continues to the
same weights as an uninterrupted run. Checkpoints are written atomically at the end of every
epoch, so an interruption loses at most the current epoch.

Write order, so that a process killed at any point leaves a folder that ``--resume`` or
``--force`` accepts: ``config.json`` first (a folder with it is a run), then ``split.json`` and
``data.json``; at the end of an epoch ``best.pt`` before ``last.pt`` (``last.pt`` never records
a best epoch that ``best.pt`` does not hold). A write killed midway leaves at most a
``.<name>.<random>.tmp`` file, removed when the run resumes.

``--force`` deletes only what a run writes (:data:`RUN_FILES` and ``cnnlens evaluate``'s
``eval-<name>/`` folders of its own files); a folder that holds anything else is refused with the
name of what it holds, and nothing is deleted.
"""

from __future__ import annotations

import contextlib
import logging
import pickle
import random
import time
import warnings
from collections.abc import Iterator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Protocol

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader

from cnnlens.data.dataset import ImageDataset, eval_transform, train_transform
from cnnlens.data.folders import ImageSet, Sample, class_weights, scan_dataset
from cnnlens.data.split import load_split, save_split, split_dataset
from cnnlens.data.transforms import Preprocessing
from cnnlens.errors import InputError
from cnnlens.evaluation.classification import EVALUATION_FILES
from cnnlens.models.checkpoint import atomic_save, checkpoint_dict
from cnnlens.models.heads import attach_head, head_names
from cnnlens.models.loaded import LoadedModel
from cnnlens.models.registry import load_model
from cnnlens.models.saliency_net import localisation_loss
from cnnlens.outputs import LOCK_FILE, TMP_SUFFIX, check_output_folder, clean_stale_tmp, tmp_prefix
from cnnlens.training.config import TrainConfig, write_json
from cnnlens.training.freeze import apply_freeze, frozen_units, set_train_mode

log = logging.getLogger(__name__)

Batch = dict[str, torch.Tensor]

#: What ``--force`` may delete: the files a run writes (a folder of only these is a run, even one
#: killed before its config.json existed).
RUN_FILES = frozenset(
    {"config.json", "split.json", "data.json", "last.pt", "best.pt", "history.json", "curves.png"}
    | {"result.json"}  # written by the saliency-aware experiment
)
#: The sub-folders of a run that ``--force`` may delete: ``cnnlens evaluate``'s ``eval-<name>/``.
EVAL_PREFIX = "eval-"


class TrainingWarning(UserWarning):
    """A setting trains something other than what it may look like (a re-initialised head, an
    F-Net the localisation loss cannot reach)."""


def _written(entry: Path, names: frozenset[str]) -> bool:
    """Whether ``entry`` is a file (or link) named in ``names``, or the temporary file
    ``.<name>.<random>.tmp`` a killed write of one of them left behind."""
    if entry.is_dir() and not entry.is_symlink():
        return False
    n = entry.name
    return n in names or any(n.startswith(tmp_prefix(f)) and n.endswith(TMP_SUFFIX) for f in names)


def foreign_entries(folder: Path) -> list[str]:
    """What in ``folder`` a run did not write (paths relative to ``folder``, sorted): anything but
    :data:`RUN_FILES` and the ``eval-<name>/`` folders of ``cnnlens evaluate``, which may hold only
    :data:`~cnnlens.evaluation.classification.EVALUATION_FILES`."""
    foreign: list[str] = []
    for entry in sorted(folder.iterdir()):
        if _written(entry, RUN_FILES) or entry.name == LOCK_FILE:  # the lock of the command running
            continue
        if entry.name.startswith(EVAL_PREFIX) and entry.is_dir() and not entry.is_symlink():
            inside = sorted(entry.iterdir())
            foreign += [f"{entry.name}/{e.name}" for e in inside if not _written(e, EVALUATION_FILES)]
            continue
        foreign.append(entry.name)
    return foreign


def is_run_file(entry: Path) -> bool:
    """Whether ``entry`` is a file a run writes (see :func:`foreign_entries`; never a folder)."""
    return _written(entry, RUN_FILES)


def is_run_folder(folder: Path) -> bool:
    """Whether ``folder`` holds a training run (its config.json, or only files a run writes)."""
    if (folder / "config.json").is_file():
        return True
    entries = [e for e in folder.iterdir() if e.name != LOCK_FILE]
    return bool(entries) and all(is_run_file(e) for e in entries)


def remove_run_files(folder: Path) -> None:
    """Delete what a run wrote in ``folder`` (see :func:`foreign_entries`), nothing else: a
    symbolic link is removed, never what it points to; an ``eval-<name>/`` folder goes only once
    it is empty."""
    for entry in folder.iterdir():
        if _written(entry, RUN_FILES):
            entry.unlink(missing_ok=True)
        elif entry.name.startswith(EVAL_PREFIX) and entry.is_dir() and not entry.is_symlink():
            for e in entry.iterdir():
                if _written(e, EVALUATION_FILES):
                    e.unlink(missing_ok=True)
            with contextlib.suppress(OSError):
                entry.rmdir()


def replace_run(folder: Path) -> None:
    """What ``--force`` does to an existing, non-empty ``folder``: delete the run's own files.

    It refuses, deleting nothing, when the folder holds anything a run does not write (a user's
    notes, a source tree, a sub-folder): ``--force`` replaces a run, it never deletes other files.

    Raises:
        InputError: ``folder`` holds a file or folder a run does not write (the message names one).
    """
    foreign = foreign_entries(folder)
    if foreign and not is_run_folder(folder):
        raise InputError(f"{folder} is not empty and not a training run; --force will not delete it")
    if foreign:
        more = f" (and {len(foreign) - 1} more)" if len(foreign) > 1 else ""
        raise InputError(
            f"{folder} holds {foreign[0]}{more}, which a training run does not write; --force only "
            f"deletes a run's own files and will not touch it: move it out of {folder} or train into "
            "another --out"
        )
    remove_run_files(folder)


def absolute_paths(config: TrainConfig) -> TrainConfig:
    """``config`` with absolute data and mask paths, so a run resumes and evaluates from anywhere."""
    return replace(
        config,
        data=str(Path(config.data).resolve()),
        masks=None if config.masks is None else str(Path(config.masks).resolve()),
    )


class Objective(Protocol):
    """The training loss: ``(module, batch) -> (loss, logits)``. ``needs_masks`` asks for masks."""

    needs_masks: bool

    def __call__(self, module: nn.Module, batch: Batch) -> tuple[torch.Tensor, torch.Tensor]: ...


class CrossEntropy:
    """Plain (optionally class-weighted) cross-entropy on the model's logits."""

    needs_masks = False

    def __init__(self, weight: torch.Tensor | None = None) -> None:
        self.weight = weight

    def __call__(self, module: nn.Module, batch: Batch) -> tuple[torch.Tensor, torch.Tensor]:
        logits = module(batch["image"])
        w = None if self.weight is None else self.weight.to(logits.device)
        return F.cross_entropy(logits, batch["label"], weight=w), logits


class SaliencyAware:
    """Fan et al.'s loss: ``L = L_cls + lambda * L_loc``, ``L_loc`` only over images with a mask.

    The network must have an SPN (:class:`~cnnlens.models.saliency_net.SaliencyAwareNet`); the
    batches carry ``mask`` and ``has_mask``.
    """

    needs_masks = True

    def __init__(
        self, kind: str = "ce", weight: float = 1.0, class_weight: torch.Tensor | None = None
    ) -> None:
        self.kind = kind
        self.weight = weight
        self.cls = CrossEntropy(class_weight)

    def __call__(self, module: nn.Module, batch: Batch) -> tuple[torch.Tensor, torch.Tensor]:
        logits, saliency = module.forward_with_saliency(batch["image"])  # type: ignore[operator]
        w = None if self.cls.weight is None else self.cls.weight.to(logits.device)
        loss = F.cross_entropy(logits, batch["label"], weight=w)
        if self.weight > 0 and saliency is not None:
            loc = localisation_loss(saliency, batch["mask"], batch["has_mask"], self.kind)
            loss = loss + self.weight * loc
        return loss, logits


class Listener:
    """Receives progress events (the CLI draws progress bars from them); every method is optional."""

    def on_start(self, trainer: Trainer, steps_per_epoch: int) -> None:
        """Called once before the first (or resumed) epoch."""

    def on_batch(self, epoch: int, step: int, loss: float, accuracy: float) -> None:
        """After each training step, with the epoch's running loss and accuracy."""

    def on_epoch(self, record: dict[str, Any]) -> None:
        """After each epoch, once its checkpoints are written."""


@dataclass
class EpochResult:
    """Mean loss (of the objective), accuracy and mean classification loss over an epoch or split."""

    loss: float
    accuracy: float
    cls_loss: float | None = None


def epoch_seed(seed: int, epoch: int) -> int:
    """The seed of one epoch's randomness (fixed by the run's seed and the epoch number alone)."""
    return (seed * 1_000_003 + epoch * 7919) % (2**63 - 1)


def resized(pre: Preprocessing, size: int | None) -> Preprocessing:
    """``pre`` at input size ``size``, keeping its resize-to-crop ratio."""
    if size is None:
        return pre
    resize = None if pre.resize is None else max(size, round(size * pre.resize / pre.crop))
    return replace(pre, resize=resize, crop=size)


class Trainer:
    """Trains ``config`` into ``run``; :meth:`create` starts a run, :meth:`resume` continues one.

    Args:
        config: The run's settings.
        run: The run folder.
        objective: The loss (default: cross-entropy, class-weighted if ``config.class_weights``).
    """

    def __init__(self, config: TrainConfig, run: Path, objective: Objective | None = None) -> None:
        self.config = config
        self.run = run
        self.dataset: ImageSet = scan_dataset(config.data, masks=config.masks, strict=config.strict)
        split_file = run / "split.json"
        if split_file.is_file():
            self.parts = load_split(self.dataset, split_file)
        else:
            self.parts = split_dataset(self.dataset, config.split, config.seed)
            save_split(self.parts, self.dataset, split_file)
        if config.saliency_aware:
            self.parts["train"] = self._keep_masks(self.parts["train"])
        torch.manual_seed(config.seed)
        self.head_status = "new"
        self.model = self._build_model()
        self.frozen = frozen_units(
            self.model.module, config.freeze, self._head, input_size=self.model.preprocessing.crop
        )
        self.trainable = apply_freeze(self.model.module, self.frozen)
        if self.trainable == 0:
            raise InputError(f"--freeze {config.freeze} leaves nothing to train")
        self._check_loc_reaches_features()
        if objective is None and config.saliency_aware:
            objective = SaliencyAware(config.loc_loss, config.loc_weight, self._class_weights())
        self.objective = objective or CrossEntropy(self._class_weights())
        params = [p for p in self.model.module.parameters() if p.requires_grad]
        self.optimizer = torch.optim.AdamW(params, lr=config.lr, weight_decay=config.weight_decay)
        self.scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(self.optimizer, T_max=config.epochs)
        self.history: list[dict[str, Any]] = []
        self.best: dict[str, float] | None = None
        self.generator = torch.Generator()
        self._write_data_report()

    # ------------------------------------------------------------------ set-up

    @classmethod
    def create(cls, config: TrainConfig, run: str | Path, *, force: bool = False, **kw: Any) -> Trainer:
        """Start a new run in ``run``.

        Raises:
            InputError: ``run`` is a file, or exists and is not empty (pass ``force=True`` to
                replace a run, or resume it); see :func:`replace_run` for what ``force`` removes.
        """
        folder = check_output_folder(run)
        existed = folder.exists()
        if existed and any(e.name != LOCK_FILE for e in folder.iterdir()):
            if not force:
                raise InputError(
                    f"{folder} already exists; use --resume {folder} to continue it or --force to replace it"
                )
            replace_run(folder)
        folder.mkdir(parents=True, exist_ok=True)
        config = absolute_paths(config)
        try:
            config.save(folder / "config.json")  # first: from here on the folder is a run
            trainer = cls(config, folder, **kw)
        except BaseException:  # a failed start leaves nothing behind: only what it wrote goes
            remove_run_files(folder)
            if not existed:
                with contextlib.suppress(OSError):
                    folder.rmdir()
            raise
        return trainer

    @classmethod
    def resume(cls, run: str | Path, **kw: Any) -> Trainer:
        """Continue the run in ``run`` from its ``last.pt``.

        Raises:
            InputError: ``run`` is not a run folder (no config.json), or its last.pt is truncated or
                not a checkpoint of this run.

        A run folder without ``last.pt`` (stopped before its first epoch ended) starts again from
        epoch 1, with a :class:`TrainingWarning` that says so. Stale temporary files of killed
        writes (``.<name>.*.tmp``) are removed first.
        """
        folder = check_output_folder(run, "--resume")
        if not (folder / "config.json").is_file():
            raise InputError(f"{folder} is not a training run (no config.json); start one without --resume")
        clean_stale_tmp(folder, RUN_FILES)
        trainer = cls(TrainConfig.load(folder / "config.json"), folder, **kw)
        last = folder / "last.pt"
        if last.is_file():
            trainer._load_state(last)
        else:
            warnings.warn(
                f"{folder} has no last.pt (the run stopped before its first epoch ended): training "
                "starts again from epoch 1",
                TrainingWarning,
                stacklevel=2,
            )
        return trainer

    def _check_loc_reaches_features(self) -> None:
        """Warn when the localisation loss can train nothing but the SPN (the F-Net is frozen)."""
        cfg = self.config
        if not cfg.saliency_aware or cfg.loc_weight == 0:
            return
        features = getattr(self.model.module, "features", None)
        if isinstance(features, nn.Module) and not any(p.requires_grad for p in features.parameters()):
            warnings.warn(
                f"--freeze {cfg.freeze} freezes the whole F-Net, so the localisation loss only trains "
                "the SPN and cannot change the features the classifier sees (C-Net gets the baseline's "
                "gradients); Fan et al. train both: use --freeze last-stage, none or until:LAYER",
                TrainingWarning,
                stacklevel=3,
            )

    @property
    def _head(self) -> list[str]:
        heads = self.model.meta["head_module"]
        return [heads] if isinstance(heads, str) else [str(h) for h in heads]  # type: ignore[attr-defined]

    def _keep_masks(self, train: list[Sample]) -> list[Sample]:
        """Fan et al.'s partial supervision: only a seeded fraction ``mask_ratio`` of the training
        images with a mask keep it."""
        masked = [i for i, s in enumerate(train) if s.mask is not None]
        if not masked:
            raise InputError(
                "saliency-aware training needs masks, but no training image has one; pass --masks MASKDIR "
                "(mask files named like the images) or a manifest with a mask column"
            )
        rng = random.Random(self.config.seed)
        keep = set(rng.sample(masked, round(self.config.mask_ratio * len(masked))))
        self.masks_used = len(keep)
        return [s if i in keep else replace(s, mask=None) for i, s in enumerate(train)]

    def _build_model(self) -> LoadedModel:
        cfg = self.config
        base = load_model(cfg.model, weights=cfg.weights, pretrained=cfg.pretrained, device=cfg.device)
        if base.head not in ("original", cfg.head):
            raise InputError(
                f"{cfg.model} has a {base.head} head, not {cfg.head}; train it on with --head {base.head}"
            )
        pre = resized(base.preprocessing, cfg.image_size)
        classes = list(self.dataset.class_names)
        if base.head == cfg.head:
            if base.num_classes == len(classes):
                return self._continued(base, pre)
            warnings.warn(
                f"{cfg.model} has a trained {base.head} head for {base.num_classes} classes but "
                f"{cfg.data} has {len(classes)}: the head is re-initialised (its trained weights are "
                "not used); the rest of the network keeps its trained weights",
                TrainingWarning,
                stacklevel=4,
            )
            self.head_status = "reinitialised"
        attached = attach_head(
            base.module,
            cfg.head,
            len(self.dataset.class_names),
            input_size=pre.crop,
            default_layer=base.default_layer,
        )
        attached.module.to(base.device)  # the new head is created on the CPU
        return replace(
            base,
            module=attached.module,
            class_names=list(self.dataset.class_names),
            preprocessing=pre,
            head=cfg.head,
            default_layer=attached.default_layer,
            source=f"cnnlens train {cfg.data} (from {base.source})",
            meta={"head_module": attached.heads},
        )

    def _continued(self, base: LoadedModel, pre: Preprocessing) -> LoadedModel:
        """Keep a trained model's head (same kind, same class count): training continues from it."""
        classes = list(self.dataset.class_names)
        if list(base.class_names) != classes:
            warnings.warn(
                f"{self.config.model} was trained on classes {', '.join(base.class_names)}; its head's "
                f"outputs are kept and now stand, in that order, for {', '.join(classes)}",
                TrainingWarning,
                stacklevel=5,
            )
        log.info("continuing to train the trained %s head of %s", base.head, self.config.model)
        self.head_status = "continued"
        return replace(
            base,
            class_names=classes,
            preprocessing=pre,
            source=f"cnnlens train {self.config.data} (from {base.source})",
            meta={"head_module": head_names(base.module, base.head)},
        )

    def _class_weights(self) -> torch.Tensor | None:
        if not self.config.class_weights:
            return None
        counts = [0] * len(self.dataset.class_names)
        for s in self.parts["train"]:
            counts[s.label] += 1
        return class_weights(counts)

    def _write_data_report(self) -> None:
        report = {
            "class_names": self.dataset.class_names,
            "counts": self.dataset.counts(),
            "split_sizes": {k: len(v) for k, v in self.parts.items()},
            "with_mask": self.dataset.masked,
            "masks_used_in_training": getattr(self, "masks_used", None),
            "skipped": self.dataset.skipped,
        }
        write_json(self.run / "data.json", report)

    def loader(self, split: str, *, train: bool) -> DataLoader:
        """A loader over one split (training: augmented and shuffled with the epoch's generator)."""
        pre = self.model.preprocessing
        transform = train_transform(pre, self.config.augment) if train else eval_transform(pre)
        masks = bool(getattr(self.objective, "needs_masks", False))
        ds = ImageDataset(self.parts[split], transform, masks=masks)
        return DataLoader(ds, batch_size=self.config.batch_size, shuffle=train, generator=self.generator)

    # ------------------------------------------------------------------ state

    def _state(self, epoch: int) -> dict[str, Any]:
        return {
            "epoch": epoch,
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "history": self.history,
            "best": self.best,
            "config": self.config.to_dict(),
        }

    def _load_state(self, path: Path) -> None:
        try:
            obj = torch.load(path, map_location="cpu", weights_only=True)
            self.model.module.load_state_dict(obj["state_dict"])
            state = obj["extra"]["training"]
        except (RuntimeError, EOFError, pickle.UnpicklingError, KeyError, TypeError, ValueError) as err:
            reason = str(err).splitlines()[0].split(". ")[0] if str(err) else type(err).__name__
            raise InputError(
                f"{path} is truncated or not a cnnlens checkpoint of this run ({reason}); restore it "
                f"from a copy, or delete it and run --resume {path.parent} again to train from epoch 1"
            ) from err
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        self.history = list(state["history"])
        self.best = state["best"]

    @property
    def epoch(self) -> int:
        """Number of epochs done."""
        return len(self.history)

    # ------------------------------------------------------------------ loop

    def fit(self, listener: Listener | None = None) -> list[dict[str, Any]]:
        """Train until ``config.epochs`` or early stopping; return the history.

        Shape:
            Each history record: epoch, train_loss, train_accuracy, val_loss (the objective),
            val_cls_loss (cross-entropy alone), val_accuracy, lr, seconds.
        """
        listener = listener or Listener()
        train_loader, val_loader = self.loader("train", train=True), self.loader("val", train=False)
        listener.on_start(self, len(train_loader))
        try:
            self._loop(train_loader, val_loader, listener)
        finally:  # also after an interruption: the curves of the epochs done
            self.plot()
        return self.history

    def _loop(self, train_loader: DataLoader, val_loader: DataLoader, listener: Listener) -> None:
        while self.epoch < self.config.epochs and not self.stopped_early():
            epoch, start = self.epoch + 1, time.perf_counter()
            seed = epoch_seed(self.config.seed, epoch)
            torch.manual_seed(seed)
            self.generator.manual_seed(seed)
            lr = self.optimizer.param_groups[0]["lr"]
            train = self._train_epoch(train_loader, epoch, listener)
            val = self.evaluate(val_loader)
            self.scheduler.step()
            record = {
                "epoch": epoch,
                "train_loss": train.loss,
                "train_accuracy": train.accuracy,
                "val_loss": val.loss,
                "val_cls_loss": val.cls_loss,
                "val_accuracy": val.accuracy,
                "lr": lr,
                "seconds": time.perf_counter() - start,
            }
            self._end_epoch(record)
            listener.on_epoch(record)

    def stopped_early(self) -> bool:
        """Whether the last ``patience`` epochs brought no better validation result."""
        p = self.config.patience
        if p is None or self.best is None:
            return False
        return self.epoch - int(self.best["epoch"]) >= p

    def _train_epoch(self, loader: DataLoader, epoch: int, listener: Listener) -> EpochResult:
        module = self.model.module
        set_train_mode(module, self.frozen)
        total = correct = 0
        loss_sum = 0.0
        for step, batch in enumerate(self._batches(loader), start=1):
            self.optimizer.zero_grad(set_to_none=True)
            loss, logits = self.objective(module, batch)
            loss.backward()
            self.optimizer.step()
            n = len(batch["label"])
            total += n
            loss_sum += float(loss.detach()) * n
            correct += int((logits.argmax(1) == batch["label"]).sum())
            listener.on_batch(epoch, step, loss_sum / total, correct / total)
        module.eval()
        return EpochResult(loss_sum / max(total, 1), correct / max(total, 1))

    def _batches(self, loader: DataLoader) -> Iterator[Batch]:
        device = self.model.device
        for batch in loader:
            yield {k: v.to(device) for k, v in batch.items()}

    @torch.no_grad()
    def evaluate(self, loader: DataLoader) -> EpochResult:
        """Mean loss of the objective, accuracy and mean (unweighted) cross-entropy over a loader,
        in eval mode.

        The cross-entropy is the classification loss alone: for saliency-aware runs the objective
        also holds ``lambda * L_loc``, which must not decide which checkpoint classifies best.
        """
        self.model.module.eval()
        total = correct = 0
        loss_sum = cls_sum = 0.0
        for batch in self._batches(loader):
            loss, logits = self.objective(self.model.module, batch)
            n = len(batch["label"])
            total += n
            loss_sum += float(loss) * n
            cls_sum += float(F.cross_entropy(logits, batch["label"])) * n
            correct += int((logits.argmax(1) == batch["label"]).sum())
        n = max(total, 1)
        return EpochResult(loss_sum / n, correct / n, cls_sum / n)

    def _improved(self, record: dict[str, Any]) -> bool:
        """Higher validation accuracy, or the same with a lower validation classification loss."""
        if self.best is None:
            return True
        acc, best_acc = record["val_accuracy"], self.best["val_accuracy"]
        if acc != best_acc:
            return bool(acc > best_acc)
        key = "val_cls_loss" if "val_cls_loss" in record and "val_cls_loss" in self.best else "val_loss"
        return bool(record[key] < self.best[key])  # runs from before val_cls_loss: the objective

    def _end_epoch(self, record: dict[str, Any]) -> None:
        self.history.append(record)
        improved = self._improved(record)
        if improved:
            self.best = {k: record[k] for k in ("epoch", "val_accuracy", "val_loss", "val_cls_loss")}
        if improved:  # before last.pt, which records this epoch as the best
            best = {"best": self.best, "config": self.config.to_dict()}
            atomic_save(checkpoint_dict(self.model, best), self.run / "best.pt")
        extra = {"training": self._state(self.epoch)}
        atomic_save(checkpoint_dict(self.model, extra), self.run / "last.pt")
        write_json(self.run / "history.json", self.history)

    def plot(self) -> Path | None:
        """Draw ``curves.png`` from the history (``None`` before the first epoch)."""
        from cnnlens.training.curves import plot_curves

        if not self.history:
            return None
        best = int(self.best["epoch"]) if self.best else None
        return plot_curves(self.history, self.run / "curves.png", best_epoch=best)
