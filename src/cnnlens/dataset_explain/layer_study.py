"""Seed 000's layer study over a data set: the share of attribution each feature block carries.

Seed 000 trains a Flatten / Dense 64 / Dropout / Dense 2 head on a frozen ImageNet VGG19, computes
SHAP values of the features of every feature-extraction layer and sums them per layer. This runs
that study end to end: it trains the same head (``mlp64``, features frozen) on any backbone cnnlens
loads (or reuses a trained run), streams the run's whole test split through the model
(:func:`~cnnlens.data.stream.stream_batches`, decoding in worker processes), attributes each image's
target score to every feature block with one layer method (layer GradientSHAP by default) and reports
each block's share of the absolute attribution per class, with bootstrap confidence intervals
(:mod:`cnnlens.probing.block_shares` says why absolute).

Files (under ``OUT/layer_study/``): ``shares.csv`` and ``shares.json`` (per class and block: images,
mean share, its interval, mean absolute and signed sums), ``images.csv`` (per test image: path,
label, target, prediction, score and each block's sums) and ``blocks.png``.
"""

from __future__ import annotations

import csv
import io
import logging
import math
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from cnnlens.attribution.methods.layer import select_layers
from cnnlens.data.folders import Sample, scan_dataset
from cnnlens.data.split import DEFAULT_FRACTIONS, check_fractions, run_split
from cnnlens.data.stream import stream_batches
from cnnlens.dataset_explain.figures import block_share_figure
from cnnlens.errors import InputError
from cnnlens.models import LoadedModel, load_model
from cnnlens.outputs import subfolder, write_json, write_text
from cnnlens.probing.block_shares import STUDY_METHODS, BlockTotals, block_totals, share_table, study_method
from cnnlens.training import Listener, TrainConfig, Trainer
from cnnlens.training.trainer import absolute_paths
from cnnlens.validation import check_positive_int

log = logging.getLogger(__name__)

#: The study's folder under OUT (also its page section's key).
SECTION = "layer_study"
#: The run folder a study trains into, under OUT.
RUN = "run"
TARGETS = ("pred", "true")


@dataclass(frozen=True)
class LayerStudyConfig:
    """The study's settings (``cnnlens experiment layer-study --help``).

    Attributes:
        data: The two-class (or K-class) dataset: class folders or a manifest.
        run: A training run folder to reuse instead of training (its test split is studied).
        backbone: Model name the head is trained on (frozen), when no ``run`` is given.
        pretrained: ImageNet weights for the backbone (else random ones).
        method: One of :data:`~cnnlens.probing.block_shares.STUDY_METHODS`.
        params: The method's hyper-parameters.
        layers: The blocks: ``auto`` (stages, else every conv), ``conv``, ``stages`` or dotted names.
        target: ``pred`` (each image's predicted class) or ``true`` (its label).
        epochs, lr, train_batch, seed, split: Training of the head.
        batch_size: Test images explained together.
        pass_batch: Points per forward pass of the method (GradientSHAP samples, IG steps).
        confidence: Level of the intervals.
        n_resamples: Bootstrap resamples.
        device: Torch device.
        workers: Decoding processes (default: :func:`~cnnlens.data.stream.default_workers`).
    """

    data: str
    run: str | None = None
    backbone: str = "efficientnet_lite0"
    pretrained: bool = True
    method: str = "layer_gradshap"
    params: dict[str, Any] = field(default_factory=dict)
    layers: str | tuple[str, ...] = "auto"
    target: str = "pred"
    epochs: int = 10
    lr: float = 1e-3
    train_batch: int = 32
    seed: int = 0
    split: tuple[float, float, float] = DEFAULT_FRACTIONS
    batch_size: int = 8
    pass_batch: int = 64
    confidence: float = 0.95
    n_resamples: int = 2000
    device: str | None = None
    workers: int | None = None

    def __post_init__(self) -> None:
        flags = {
            "epochs": "--epochs",
            "train_batch": "--train-batch-size",
            "batch_size": "--batch-size",
            "pass_batch": "--pass-batch",
            "n_resamples": "--resamples",
        }
        for name, flag in flags.items():
            check_positive_int(flag, getattr(self, name))
        if self.method not in STUDY_METHODS:
            raise InputError(
                f"--method must be a layer attribution method ({', '.join(STUDY_METHODS)}), "
                f"got {self.method!r}"
            )
        if self.target not in TARGETS:
            raise InputError(f"--target must be pred or true, got {self.target!r}")
        if not 0 < self.confidence < 1:
            raise InputError(f"--confidence must be between 0 and 1, got {self.confidence}")
        check_fractions(self.split)
        if self.split[2] <= 0:
            raise InputError(f"--split must leave a test fraction above 0, got {list(self.split)}")

    def train_config(self) -> TrainConfig:
        """The run that trains seed 000's head: ``mlp64`` on the frozen backbone."""
        return absolute_paths(
            TrainConfig(
                data=self.data,
                model=self.backbone,
                head="mlp64",
                freeze="features",
                epochs=self.epochs,
                lr=self.lr,
                batch_size=self.train_batch,
                seed=self.seed,
                pretrained=self.pretrained,
                split=self.split,
                device=self.device,
            )
        )


def prepare_run(cfg: LayerStudyConfig, out: Path) -> tuple[Trainer | None, Path]:
    """The trainer of ``OUT/run`` (new, or resumed when it was started with the same settings), or
    ``None`` and the given run when ``cfg.run`` is reused. Everything is checked before any file is
    written."""
    if cfg.run is not None:
        run = Path(cfg.run)
        run_split(run, "test")  # a run folder with a non-empty test split, or one clear line
        return None, run
    run = out / RUN
    wanted = cfg.train_config()
    if (run / "config.json").is_file():
        stored = TrainConfig.load(run / "config.json").to_dict()
        changed = sorted(k for k in wanted.to_dict() if stored.get(k) != wanted.to_dict()[k])
        if changed:
            raise InputError(
                f"{run} was trained with other settings ({', '.join(changed)}); give another --out, "
                f"or reuse it with --model {run}"
            )
        return Trainer.resume(run), run
    return Trainer.create(wanted, run), run


def check_study(cfg: LayerStudyConfig) -> None:
    """Everything that can be checked before training: the data exists, the run (when reused) is a
    run trained on it, named blocks exist and the method takes its parameters (on the backbone with
    random weights, which has the trained model's feature layers)."""
    if cfg.params or not isinstance(cfg.layers, str):
        probe = load_model(cfg.backbone, pretrained=False) if cfg.run is None else load_model(cfg.run)
        study_method(cfg.method, probe, **cfg.params)
        if not isinstance(cfg.layers, str):
            select_layers(probe.module, list(cfg.layers))
    if cfg.run is None:
        scan_dataset(cfg.data)
        return
    run_split(cfg.run, "test")
    trained_on = TrainConfig.load(Path(cfg.run) / "config.json").data
    if Path(trained_on).resolve() != Path(cfg.data).resolve():
        raise InputError(f"{cfg.run} was trained on {trained_on}, not on {cfg.data}; give its data as DATA")


def run_layer_study(
    cfg: LayerStudyConfig,
    out: str | Path,
    *,
    listener: Listener | None = None,
    on_start: Callable[[int], None] | None = None,
    advance: Callable[[int], None] | None = None,
) -> dict[str, Any]:
    """Train (or reuse) the run, explain its whole test split at every block, write the tables.

    Args:
        cfg: The study.
        out: Output folder (``run/`` when training, ``layer_study/``).
        listener: Follows the training.
        on_start: Called with the number of test images before the first batch.
        advance: Called with the number of images of each batch done.

    Returns:
        The contents of ``OUT/layer_study/shares.json``.
    """
    folder = Path(out)
    check_study(cfg)
    trainer, run = prepare_run(cfg, folder)
    if trainer is not None:
        trainer.fit(listener)
    samples, source = run_split(run, "test")
    model = load_model(str(run), device=cfg.device)
    method = study_method(cfg.method, model, **cfg.params)
    layers = cfg.layers if isinstance(cfg.layers, str) else list(cfg.layers)
    if on_start is not None:
        on_start(len(samples))
    parts: list[BlockTotals] = []
    labels: list[np.ndarray] = []
    kept: list[np.ndarray] = []
    failed: list[tuple[int, str]] = []
    for batch in stream_batches(samples, model.preprocessing, batch_size=cfg.batch_size, workers=cfg.workers):
        failed += batch.failed
        if len(batch):
            target = batch.labels if cfg.target == "true" else None
            parts.append(block_totals(method, batch.inputs, target, layers=layers, batch_size=cfg.pass_batch))
            labels.append(batch.labels.numpy())
            kept.append(batch.indices.numpy())
        if advance is not None:
            advance(len(batch) + len(batch.failed))
    if not parts:
        raise InputError(f"no image of the test split of {run} could be read ({failed[0][1]})")
    totals = BlockTotals(
        blocks=parts[0].blocks,
        units=parts[0].units,
        l1=np.concatenate([p.l1 for p in parts]),
        signed=np.concatenate([p.signed for p in parts]),
        targets=np.concatenate([p.targets for p in parts]),
        logits=np.concatenate([p.logits for p in parts]),
    )
    result = summarise(
        cfg, model, totals, np.concatenate(labels), [samples[i] for i in np.concatenate(kept)], failed
    )
    result["run"] = str(run)
    result["data"] = source
    result["method_params"] = {
        k: v for k, v in method.get_params().items() if isinstance(v, (int, float, str, bool, type(None)))
    }
    write_outputs(folder, result, totals, [samples[i] for i in np.concatenate(kept)], np.concatenate(labels))
    return result


def summarise(
    cfg: LayerStudyConfig,
    model: LoadedModel,
    totals: BlockTotals,
    labels: np.ndarray,
    samples: list[Sample],
    failed: list[tuple[int, str]],
) -> dict[str, Any]:
    """The per-class share table (plus ``all``), block sums and accuracy as one JSON-ready dict."""
    names = list(model.class_names)
    shares = totals.shares()
    n = len(totals.targets)
    # every image twice: once in its explained class, once in "all"
    groups = np.concatenate([totals.targets, np.full(n, len(names), dtype=np.int64)])
    stacked = np.concatenate([shares, shares])
    group_names = [*names, "all"]
    rows = share_table(
        stacked,
        groups,
        totals.blocks,
        group_names,
        confidence=cfg.confidence,
        n_resamples=cfg.n_resamples,
        seed=cfg.seed,
    )
    for row in rows:
        g = group_names.index(row["class"])
        sel = totals.targets == g if g < len(names) else np.ones(n, dtype=bool)
        b = row["block_index"]
        row["units"] = totals.units[b]
        row["mean_abs"] = float(totals.l1[sel, b].mean())
        row["mean_signed"] = float(totals.signed[sel, b].mean())
    preds = totals.logits.argmax(1)
    return {
        "config": {**asdict(cfg), "params": {k: str(v) for k, v in cfg.params.items()}},
        "method": cfg.method,
        "target": cfg.target,
        "blocks": totals.blocks,
        "units": totals.units,
        "class_names": names,
        "images": len(samples),
        "failed": [{"index": i, "error": e} for i, e in failed],
        "accuracy": float((preds == labels).mean()),
        "confidence": cfg.confidence,
        "rows": rows,
    }


SHARE_COLUMNS = (
    "class",
    "block_index",
    "block",
    "images",
    "share",
    "ci_low",
    "ci_high",
    "units",
    "mean_abs",
    "mean_signed",
)


def _csv(header: list[str], rows: list[list[Any]]) -> str:
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(header)
    writer.writerows(rows)
    return buf.getvalue()


def write_outputs(
    out: Path, result: dict[str, Any], totals: BlockTotals, samples: list[Sample], labels: np.ndarray
) -> Path:
    """``OUT/layer_study/``: ``shares.json``, ``shares.csv``, ``images.csv`` and ``blocks.png``."""
    folder = subfolder(out, SECTION)
    write_json(folder / "shares.json", result)
    write_text(
        folder / "shares.csv",
        _csv(list(SHARE_COLUMNS), [[r[c] for c in SHARE_COLUMNS] for r in result["rows"]]),
    )
    names = result["class_names"]
    header = ["path", "label", "target", "prediction", "score"]
    header += [f"abs_{b}" for b in totals.blocks] + [f"signed_{b}" for b in totals.blocks]
    probs = np.exp(totals.logits - totals.logits.max(1, keepdims=True))
    probs /= probs.sum(1, keepdims=True)
    rows = [
        [
            str(s.path),
            names[int(labels[i])] if 0 <= labels[i] < len(names) else "",
            names[int(totals.targets[i])],
            names[int(totals.logits[i].argmax())],
            float(probs[i, totals.targets[i]]),
            *(float(v) for v in totals.l1[i]),
            *(float(v) for v in totals.signed[i]),
        ]
        for i, s in enumerate(samples)
    ]
    write_text(folder / "images.csv", _csv(header, rows))
    block_share_figure(result["rows"], folder / "blocks.png", title=figure_title(result))
    return folder


def figure_title(result: dict[str, Any]) -> str:
    level = round(100 * result["confidence"])
    return (
        f"share of |{result['method']}| per block, {result['images']} test images "
        f"(mean and {level}% bootstrap CI)"
    )


def fmt_share(row: dict[str, Any]) -> str:
    """``0.123 [0.101, 0.140]``."""
    if math.isnan(row["ci_low"]):
        return f"{row['share']:.3f}"
    return f"{row['share']:.3f} [{row['ci_low']:.3f}, {row['ci_high']:.3f}]"


__all__ = ["SECTION", "LayerStudyConfig", "run_layer_study"]
