"""Fan et al.'s saliency-aware training experiment as one call: baseline vs saliency-aware
training over backbones, mask ratios, localisation losses and seeds.

Each configuration is a training run (:class:`~cnnlens.training.trainer.Trainer`) in its own folder
``OUT/runs/<backbone>/<config>/seed<k>``; a finished run (its ``result.json`` exists and records the
same training settings and threshold) is reused and a stopped one (``last.pt``, no ``result.json``)
is resumed, so an interrupted experiment continues where it stopped. A run whose settings differ
from the current ones (``--epochs``, ``--lambda``, ``--image-size``...) is trained again from
scratch. Ratio 0 is Fan et al.'s baseline: C-Net without SPN (head ``cnet``), trained on the
classification loss; ratio R > 0 trains head ``spn`` with the masks of a seeded fraction R of the
training images. By default (``freeze="auto"``) a pretrained F-Net trains its last stage and a
random one trains entirely, in the baseline and the saliency-aware runs alike, so that the
localisation loss reaches the features (Fan et al. back-propagate it into the F-Net).

Every run is scored on its test split:

* classification: accuracy and the per-class-averaged precision, sensitivity, specificity and F1
  (Fan et al.'s tables);
* the SPN map against the masks: IoU at a threshold and soft Dice (saliency-aware runs only);
* Grad-CAM at the backbone's default layer against the masks: pointing game and the share of the
  positive attribution inside the mask, for the baseline and the saliency-aware models alike.

The tables give mean +/- sample standard deviation (ddof 1) over seeds (``OUT/results.md``,
``OUT/results.json``), with a table comparing the localisation losses when there are several,
and ``OUT/figure.png`` shows image / mask / SPN map / Grad-CAM (baseline and saliency-aware) for a
few test images.

References:
    Fan, Li, Song, Yang. Explainable deep learning-based classification on small-sized dataset
    (project report; no year given): ResNet F-Nets with and without the SPN on 8 CUB-200 bird
    classes and on breast ultrasound (BUSI), mask ratios 1 and 0.25, CE / L1 / L2 localisation losses.
"""

from __future__ import annotations

import logging
import math
import os
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader

from cnnlens.attribution import create
from cnnlens.data.dataset import ImageDataset, eval_transform
from cnnlens.errors import InputError
from cnnlens.evaluation.classification import evaluate
from cnnlens.evaluation.localisation import energy_in_mask, iou_at, pointing_game, soft_dice
from cnnlens.models.saliency_net import LOC_LOSSES
from cnnlens.outputs import safe_name, write_text, write_with
from cnnlens.training.config import TrainConfig, write_json
from cnnlens.training.trainer import Trainer, absolute_paths
from cnnlens.validation import read_json

log = logging.getLogger(__name__)

#: Settings that change where a run trains, not what it computes: ignored when a run is reused.
NOT_COMPARED = ("device",)

CLASSIFICATION = ("accuracy", "precision", "sensitivity", "specificity", "f1")
LOCALISATION = ("spn_iou", "spn_dice", "gradcam_pointing", "gradcam_energy")
#: The column title of each metric in ``results.md``.
COLUMNS = {
    "accuracy": "accuracy",
    "precision": "precision",
    "sensitivity": "sensitivity",
    "specificity": "specificity",
    "f1": "F1",
    "spn_iou": "SPN IoU",
    "spn_dice": "SPN soft Dice",
    "gradcam_pointing": "Grad-CAM pointing game",
    "gradcam_energy": "Grad-CAM energy in mask",
}


@dataclass(frozen=True)
class Backbone:
    """An F-Net: a model name and whether it starts from pretrained weights."""

    name: str
    pretrained: bool = True

    @property
    def label(self) -> str:
        return self.name if self.pretrained else f"{self.name}:random"

    @classmethod
    def parse(cls, text: str) -> Backbone:
        """``NAME`` (pretrained weights) or ``NAME:random`` (random initialisation)."""
        name, _, init = text.strip().partition(":")
        if not name or init not in ("", "random", "pretrained"):
            raise InputError(f"backbone {text!r}: expected NAME or NAME:random, e.g. resnet18:random")
        return cls(name, init != "random")


@dataclass(frozen=True)
class ExperimentConfig:
    """The grid of the experiment and the training settings shared by every run.

    Attributes:
        data: Dataset (class folders with ``masks``, or a manifest with a mask column).
        masks: Mask folder for class-folder data.
        backbones: The F-Nets.
        ratios: Fractions of training images that keep their mask (0: the baseline without SPN).
        loc_losses: Localisation losses tried for each ratio > 0.
        seeds: Number of seeds (0 .. seeds-1) per configuration.
        freeze: ``"auto"`` (pretrained backbones train their last stage, ``"last-stage"``, so the
            localisation loss reaches the F-Net as in Fan et al.; random ones train entirely; the
            same for the baseline and the saliency-aware runs), or any :class:`TrainConfig` freeze
            policy.
        threshold: Threshold of the SPN map for its IoU with the mask.
        figure_images: How many test images the figure shows.
    """

    data: str
    masks: str | None = None
    backbones: tuple[Backbone, ...] = (Backbone("resnet18"),)
    ratios: tuple[float, ...] = (0.0, 0.25, 1.0)
    loc_losses: tuple[str, ...] = ("ce",)
    seeds: int = 3
    epochs: int = 10
    lr: float = 1e-3
    batch_size: int = 16
    image_size: int | None = None
    loc_weight: float = 1.0
    freeze: str = "auto"
    augment: str = "standard"
    device: str | None = None
    threshold: float = 0.5
    figure_images: int = 4

    def __post_init__(self) -> None:
        if not self.backbones:
            raise InputError("--backbones needs at least one backbone")
        if not self.ratios or any(not 0.0 <= r <= 1.0 for r in self.ratios):
            raise InputError(f"--ratios are fractions between 0 and 1, got {list(self.ratios)}")
        bad = [x for x in self.loc_losses if x not in LOC_LOSSES]
        if bad or not self.loc_losses:
            raise InputError(
                f"--loc-losses must be among {', '.join(LOC_LOSSES)}, got {list(self.loc_losses)}"
            )
        if self.seeds < 1:
            raise InputError(f"--seeds must be at least 1, got {self.seeds}")
        if not 0.0 < self.threshold < 1.0:
            raise InputError(f"--threshold must lie in (0, 1), got {self.threshold}")


@dataclass(frozen=True)
class RunSpec:
    """One training run of the grid."""

    backbone: Backbone
    ratio: float
    loc_loss: str | None
    seed: int

    @property
    def config_label(self) -> str:
        return "baseline" if self.ratio == 0 else f"SA r={self.ratio:g} {self.loc_loss}"

    @property
    def method(self) -> str:
        """Fan et al.'s "Method" column: ``baseline`` (no SPN) or ``saliency-aware``."""
        return "baseline" if self.ratio == 0 else "saliency-aware"

    @property
    def folder(self) -> Path:
        name = "baseline" if self.ratio == 0 else f"r{self.ratio:g}-{self.loc_loss}"
        return Path(safe_name(self.backbone.label.replace(":", "-"))) / name / f"seed{self.seed}"


def grid(cfg: ExperimentConfig) -> list[RunSpec]:
    """Every run: per backbone, the baseline once and each (ratio > 0, loss), each seed."""
    runs = []
    for b in cfg.backbones:
        for r in sorted(set(cfg.ratios)):
            for loss in [None] if r == 0 else list(dict.fromkeys(cfg.loc_losses)):
                runs += [RunSpec(b, r, loss, s) for s in range(cfg.seeds)]
    return runs


def train_config(cfg: ExperimentConfig, spec: RunSpec) -> TrainConfig:
    """The training settings of one run (``freeze="auto"`` resolved by :class:`TrainConfig`)."""
    return TrainConfig(
        data=cfg.data,
        model=spec.backbone.name,
        head="cnet" if spec.ratio == 0 else "spn",
        freeze=cfg.freeze,
        epochs=cfg.epochs,
        lr=cfg.lr,
        batch_size=cfg.batch_size,
        seed=spec.seed,
        masks=cfg.masks,
        augment=cfg.augment,
        image_size=cfg.image_size,
        pretrained=spec.backbone.pretrained,
        device=cfg.device,
        mask_ratio=spec.ratio if spec.ratio > 0 else 1.0,
        loc_loss=spec.loc_loss or "ce",
        loc_weight=cfg.loc_weight,
    )


def masked_test_loader(trainer: Trainer, batch_size: int = 32) -> DataLoader:
    """The run's test split with masks, in the model's evaluation preprocessing."""
    ds = ImageDataset(trainer.parts["test"], eval_transform(trainer.model.preprocessing), masks=True)
    return DataLoader(ds, batch_size=batch_size, shuffle=False)


def score_run(trainer: Trainer, run: Path, threshold: float) -> dict[str, Any]:
    """Test-split classification and localisation of the run's best checkpoint."""
    ev = evaluate(run)
    model = ev.model
    macro = ev.metrics.macro
    scores: dict[str, Any] = {"accuracy": ev.metrics.accuracy, **{k: macro[k] for k in CLASSIFICATION[1:]}}
    module = model.module
    has_spn = getattr(module, "spn", None) is not None
    gradcam = create("gradcam", model)
    values: dict[str, list[float]] = {k: [] for k in LOCALISATION}
    tolerance = 15.0 * trainer.model.preprocessing.crop / 224  # the usual 15 px at 224 px, scaled
    for batch in masked_test_loader(trainer):
        keep = batch["has_mask"].bool()
        if not bool(keep.any()):
            continue
        images, masks = batch["image"][keep], batch["mask"][keep][:, 0].bool()
        cams = gradcam.explain(images).attributions
        for cam, mask in zip(cams, masks):
            values["gradcam_pointing"].append(pointing_game(cam, mask, tolerance))
            values["gradcam_energy"].append(energy_in_mask(cam, mask))
        if has_spn:
            with torch.no_grad():
                sal = module.saliency(images)  # type: ignore[operator]
            for s, mask in zip(sal, masks):
                values["spn_iou"].append(iou_at(s, mask, threshold))
                values["spn_dice"].append(soft_dice(s, mask))
    for k, v in values.items():
        finite = [x for x in v if math.isfinite(x)]
        scores[k] = float(np.mean(finite)) if finite else None
    scores["n_test"] = ev.metrics.total
    scores["n_test_masks"] = len(values["gradcam_pointing"])
    scores["best_epoch"] = trainer.best["epoch"] if trainer.best else None
    return scores


@dataclass
class ExperimentResult:
    """The scored runs of an experiment and the tables made from them."""

    config: ExperimentConfig
    runs: list[dict[str, Any]] = field(default_factory=list)

    def table(self) -> list[dict[str, Any]]:
        """Mean and sample standard deviation (ddof 1; ``None`` for one seed) over seeds per
        (backbone, mask ratio, localisation loss), in the order the runs were made.

        Shape:
            Each row: backbone, weights, config (label), method, mask_ratio, loc_loss (``None`` for
            the baseline), seeds, and ``(mean, std)`` per metric of :data:`CLASSIFICATION` and
            :data:`LOCALISATION` (``None`` where no run has the metric).
        """
        groups: dict[tuple[str, str], list[dict[str, Any]]] = {}
        for r in self.runs:
            groups.setdefault((r["backbone"], r["config"]), []).append(r)
        rows = []
        for (backbone, config), runs in groups.items():
            first = runs[0]
            row: dict[str, Any] = {
                "backbone": backbone,
                "weights": first["weights"],
                "config": config,
                "method": "baseline" if first["ratio"] == 0 else "saliency-aware",
                "mask_ratio": first["ratio"],
                "loc_loss": first["loc_loss"],
                "seeds": len(runs),
            }
            for k in (*CLASSIFICATION, *LOCALISATION):
                row[k] = mean_std([r["scores"][k] for r in runs if r["scores"].get(k) is not None])
            rows.append(row)
        return rows

    def to_dict(self) -> dict[str, Any]:
        return {"config": _config_dict(self.config), "runs": self.runs, "table": self.table()}


def mean_std(values: list[float]) -> tuple[float, float | None] | None:
    """Mean and sample standard deviation (ddof 1) of seed results; std ``None`` for one value."""
    if not values:
        return None
    std = float(np.std(values, ddof=1)) if len(values) > 1 else None
    return float(np.mean(values)), std


def _fmt(value: tuple[float, float | None] | None) -> str:
    if value is None:
        return "n/a"
    mean, std = value
    return f"{mean:.3f}" if std is None else f"{mean:.3f} ± {std:.3f}"


def _loss_cell(row: dict[str, Any]) -> str:
    return "—" if row["loc_loss"] is None else str(row["loc_loss"]).upper()


def markdown(result: ExperimentResult) -> str:
    """Fan et al.'s tables, mean ± sample std over seeds: classification (per-class averages; Table 1),
    the localisation losses compared (Table 2, when the grid has several) and localisation."""
    rows = result.table()
    cfg = result.config
    lines = [
        "# Saliency-aware training (Fan et al.)",
        "",
        f"Data: `{cfg.data}`; {cfg.seeds} seed(s); {cfg.epochs} epochs; lambda = {cfg.loc_weight}; "
        f"freeze = {cfg.freeze} ({_freeze_note(result)}); image size = "
        f"{cfg.image_size or 'the model default'}. Mean ± sample standard deviation (ddof 1) over "
        "seeds, on each run's test split. Baseline: C-Net without SPN (mask ratio 0); saliency-aware: "
        "C-Net + SPN with masks kept for a fraction (mask ratio) of the training images, trained with "
        "the localisation loss (loc loss).",
    ]
    lines += _grid_table("Classification (per-class averages)", rows, CLASSIFICATION)
    losses = list(dict.fromkeys(r["loc_loss"] for r in rows if r["loc_loss"] is not None))
    if len(losses) > 1:
        sa = [r for r in rows if r["loc_loss"] is not None]
        sa.sort(key=lambda r: (r["backbone"], losses.index(r["loc_loss"]), -r["mask_ratio"]))
        lines += _table(
            "Localisation loss compared (per-class averages)",
            ["backbone", "weights", "loc loss", "mask ratio", *(COLUMNS[k] for k in CLASSIFICATION[1:])],
            [
                [r["backbone"], r["weights"], _loss_cell(r), f"{r['mask_ratio']:g}"]
                + [_fmt(r[k]) for k in CLASSIFICATION[1:]]
                for r in sa
            ],
        )
    lines += _grid_table(
        f"Localisation against the masks (SPN map thresholded at {cfg.threshold:g}; Grad-CAM at the "
        "backbone's last feature layer)",
        rows,
        LOCALISATION,
    )
    lines += ["", "![image, mask, SPN map, Grad-CAM](figure.png)", ""]
    return "\n".join(lines)


def _grid_table(title: str, rows: list[dict[str, Any]], keys: tuple[str, ...]) -> list[str]:
    """One line per configuration of the grid (backbone ... loc loss) with the metrics ``keys``."""
    lead = ["backbone", "weights", "method", "mask ratio", "loc loss"]
    return _table(
        title,
        [*lead, *(COLUMNS[k] for k in keys)],
        [
            [r["backbone"], r["weights"], r["method"], f"{r['mask_ratio']:g}", _loss_cell(r)]
            + [_fmt(r[k]) for k in keys]
            for r in rows
        ],
    )


def _table(title: str, header: list[str], rows: list[list[str]]) -> list[str]:
    """A markdown section: a blank line, ``## title``, a blank line and the table."""
    return ["", f"## {title}", "", _cells(header), "|" + "---|" * len(header)] + [_cells(r) for r in rows]


def _cells(cells: list[str]) -> str:
    return "| " + " | ".join(cells) + " |"


def _freeze_note(result: ExperimentResult) -> str:
    """The freeze policy each backbone's runs used, e.g. ``efficientnet_lite0: last-stage``."""
    used: dict[str, set[str]] = {}
    for r in result.runs:
        used.setdefault(r["backbone"], set()).add(str(r.get("freeze")))
    return "; ".join(f"{b}: {', '.join(sorted(f))}" for b, f in used.items())


def figure(result: ExperimentResult, out: Path, n_images: int) -> Path | None:
    """Image / mask / SPN map / Grad-CAM of the baseline and of the saliency-aware model, per backbone.

    Uses seed 0 of the baseline and of the saliency-aware configuration with the most masks (first
    loss) for each backbone.
    """
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib.figure import Figure

    from cnnlens.models import load_model

    panels = []
    for backbone in result.config.backbones:
        runs = [r for r in result.runs if r["backbone"] == backbone.label and r["seed"] == 0]
        base = next((r for r in runs if r["ratio"] == 0), None)
        candidates = sorted((r for r in runs if r["ratio"] > 0), key=lambda r: -r["ratio"])
        if candidates:
            panels.append((backbone.label, base, candidates[0]))
    if not panels:
        return None
    rows_per = max(1, n_images)
    fig = Figure(figsize=(10, 2.4 * rows_per * len(panels)))
    axes = fig.subplots(rows_per * len(panels), 5, squeeze=False)
    titles = ["image", "mask", "SPN map", "Grad-CAM baseline", "Grad-CAM saliency-aware"]
    for p, (label, base, sa) in enumerate(panels):
        sa_model = load_model(sa["run"])
        trainer = Trainer.resume(sa["run"])
        batch = next(iter(masked_test_loader(trainer)))
        keep = batch["has_mask"].bool()
        images, masks = batch["image"][keep][:rows_per], batch["mask"][keep][:rows_per, 0]
        with torch.no_grad():
            spn = sa_model.module.saliency(images)  # type: ignore[operator]
        cam_sa = create("gradcam", sa_model).explain(images).attributions
        cam_base = create("gradcam", load_model(base["run"])).explain(images).attributions if base else None
        for i in range(len(images)):
            row = axes[p * rows_per + i]
            shown = sa_model.preprocessing.denormalize(images[i]).clamp(0, 1)
            row[0].imshow(shown.permute(1, 2, 0).numpy())
            row[1].imshow(masks[i], cmap="gray", vmin=0, vmax=1)
            row[2].imshow(spn[i], cmap="jet", vmin=0, vmax=1)
            if cam_base is not None:
                row[3].imshow(cam_base[i], cmap="jet")
            row[4].imshow(cam_sa[i], cmap="jet")
            for j, ax in enumerate(row):
                ax.set_xticks([])
                ax.set_yticks([])
                if i == 0:
                    ax.set_title(f"{titles[j]}\n{label}" if j == 0 else titles[j], fontsize=8)
    fig.tight_layout()
    path = out / "figure.png"
    write_with(path, lambda f: fig.savefig(f, format="png", dpi=80))
    return path


def run_experiment(
    cfg: ExperimentConfig,
    out: str | os.PathLike[str],
    *,
    on_run: Callable[[int, int, RunSpec, dict[str, Any] | None], None] | None = None,
) -> ExperimentResult:
    """Train and score every run of the grid (reusing finished runs), then write the tables.

    Args:
        cfg: The experiment.
        out: Output folder (``runs/``, ``results.json``, ``results.md``, ``figure.png``).
        on_run: Called before (scores ``None``) and after each run with its index, the run count,
            the run and its scores.
    """
    folder = Path(out)
    folder.mkdir(parents=True, exist_ok=True)
    write_json(folder / "experiment.json", _config_dict(cfg))
    result = ExperimentResult(cfg)
    specs = grid(cfg)
    for i, spec in enumerate(specs):
        if on_run:
            on_run(i, len(specs), spec, None)
        record = run_one(cfg, spec, folder / "runs" / spec.folder)
        result.runs.append(record)
        if on_run:
            on_run(i, len(specs), spec, record["scores"])
    write_json(folder / "results.json", result.to_dict())
    figure(result, folder, cfg.figure_images)
    write_text(folder / "results.md", markdown(result))
    return result


def run_one(cfg: ExperimentConfig, spec: RunSpec, run: Path) -> dict[str, Any]:
    """Train (or resume, or reuse) and score one run; return its ``result.json`` record.

    ``result.json`` is reused when it records the same training settings and threshold; a run
    folder whose ``config.json`` matches is resumed (a stopped run continues, a finished one is
    scored again); a run trained with other settings is trained again from scratch.
    """
    wanted = absolute_paths(train_config(cfg, spec))
    done = run / "result.json"
    if done.is_file():
        record: dict[str, Any] = read_json(done, "experiment result written by cnnlens experiment")
        if not _changed(record.get("train_config"), wanted) and record.get("threshold") == cfg.threshold:
            return record
    trainer = None
    if (run / "config.json").is_file():
        changed = _changed(_stored_config(run), wanted)
        if changed:
            log.warning("%s was trained with other settings (%s); training it again", run, ", ".join(changed))
        else:
            trainer = Trainer.resume(run)
    if trainer is None:
        trainer = Trainer.create(wanted, run, force=run.exists())
    trainer.fit()  # nothing to do for a finished run
    record = {
        "backbone": spec.backbone.label,
        "weights": "ImageNet-pretrained" if spec.backbone.pretrained else "random init",
        "config": spec.config_label,
        "ratio": spec.ratio,
        "loc_loss": spec.loc_loss,
        "seed": spec.seed,
        "run": str(run),
        "freeze": trainer.config.freeze,
        "train_config": trainer.config.to_dict(),
        "threshold": cfg.threshold,
        "scores": score_run(trainer, run, cfg.threshold),
    }
    write_json(done, record)
    return record


def _stored_config(run: Path) -> dict[str, Any] | None:
    try:
        return TrainConfig.load(run / "config.json").to_dict()
    except (ValueError, TypeError, KeyError):  # unreadable or from an incompatible version
        return None


def _changed(stored: dict[str, Any] | None, wanted: TrainConfig) -> list[str]:
    """The training settings that differ between a stored run and ``wanted`` (all when unknown)."""
    target = wanted.to_dict()
    if stored is None:
        return ["(settings not recorded)"]
    keys = (set(stored) | set(target)) - set(NOT_COMPARED)
    return sorted(k for k in keys if stored.get(k) != target.get(k))


def _config_dict(cfg: ExperimentConfig) -> dict[str, Any]:
    d = asdict(cfg)
    d["backbones"] = [b.label for b in cfg.backbones]
    return d
