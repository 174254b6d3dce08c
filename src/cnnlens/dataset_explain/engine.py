"""Explaining every image of a dataset with several methods, batch by batch, into a :class:`Store`.

A batch of ``batch_size`` different images is explained by each method in one call
(``method.explain(inputs, target=[t_1, ..., t_n])``): a single-pass gradient method runs one
forward and one backward pass for the whole batch. Images are decoded ahead in worker processes
(:func:`~cnnlens.data.stream.stream_batches`). Batches are fixed by position (batch ``b`` holds images
``b * batch_size ..``), so a resumed run, or the Ray engine, explains the same groups of images and
writes the same bytes.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from cnnlens.attribution.core.base import Attribution
from cnnlens.attribution.core.registry import create
from cnnlens.attribution.core.targets import class_index
from cnnlens.data.folders import ImageSet, Sample, read_data
from cnnlens.data.stream import Batch, stream_batches
from cnnlens.dataset_explain.store import DTYPES, Layout, Store
from cnnlens.dataset_explain.summaries import map_numbers
from cnnlens.errors import InputError
from cnnlens.models import LoadedModel, load_model
from cnnlens.validation import check_positive_int

log = logging.getLogger(__name__)

ENGINES = ("local", "ray")

Advance = Callable[[int], None]


@dataclass(frozen=True)
class Recipe:
    """How to build the model and the methods: plain values, so a Ray actor can rebuild them.

    Attributes:
        model: Model name, checkpoint file or run folder (see :func:`~cnnlens.models.load_model`).
        weights: A state-dict file for the named architecture.
        pretrained: Pretrained weights (else random ones).
        device: Torch device (``None``: the CPU).
        methods: ``(name, hyper-parameters)`` per method, as :meth:`Attribution.get_params` gives them.
    """

    model: str
    weights: str | None = None
    pretrained: bool = True
    device: str | None = None
    methods: tuple[tuple[str, dict[str, Any]], ...] = ()

    @classmethod
    def of(
        cls,
        methods: Sequence[Attribution],
        *,
        model: str,
        weights: str | None = None,
        pretrained: bool = True,
        device: str | None = None,
    ) -> Recipe:
        """The recipe that rebuilds ``methods`` (made on the model loaded with these arguments)."""
        return cls(model, weights, pretrained, device, tuple((m.name, m.get_params()) for m in methods))

    def build(self) -> tuple[LoadedModel, list[Attribution]]:
        model = load_model(self.model, weights=self.weights, pretrained=self.pretrained, device=self.device)
        return model, [create(name, model, **params) for name, params in self.methods]


@dataclass(frozen=True)
class Job:
    """What to explain and how (see ``cnnlens explain-dataset --help``)."""

    data: str
    recipe: Recipe
    split: str | None = None
    masks: str | None = None
    target: str = "pred"
    batch_size: int = 32
    dtype: str = "float16"
    workers: int | None = None


def model_checksum(model: LoadedModel) -> str:
    """SHA-256 of the model's state dict (names, shapes and values), to tell weights apart."""
    digest = hashlib.sha256()
    for name, tensor in model.module.state_dict().items():
        t = tensor.detach().cpu().contiguous()
        digest.update(f"{name}:{tuple(t.shape)}:{t.dtype}".encode())
        digest.update(t.reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return digest.hexdigest()


def resolve_target(target: str, model: LoadedModel, data: ImageSet) -> int | str:
    """``"true"``, ``"pred"`` or a class index of the model (``--target``), checked before any work."""
    if target == "pred":
        return target
    if target == "true":
        if data.class_names != list(model.class_names):
            raise InputError(
                f"--target true explains each image's label, but the dataset's classes "
                f"({', '.join(data.class_names[:4])}...) are not the model's "
                f"({', '.join(model.class_names[:4])}...); use --target pred or a class"
            )
        return target
    return class_index(target, model.class_names, model.num_classes)


def settings_of(
    job: Job, model: LoadedModel, methods: Sequence[Attribution], data: ImageSet
) -> dict[str, Any]:
    """What a rerun must share with the run that made a store."""
    return {
        "data": str(Path(job.data).resolve()),
        "split": job.split,
        "masks": str(Path(job.masks).resolve()) if job.masks else None,
        "images": [data.relative(s.path) for s in data.samples],
        "model": {
            "name": model.name,
            "arch": model.arch,
            "source": model.source,
            "sha256": model_checksum(model),
        },
        "methods": {m.name: m.get_params() for m in methods},
        "target": job.target,
        "batch_size": job.batch_size,
        "dtype": job.dtype,
    }


def explain_batch(
    model: LoadedModel,
    methods: Sequence[Attribution],
    batch: Batch,
    samples: Sequence[Sample],
    data: ImageSet,
    target: int | str,
) -> tuple[list[dict[str, Any]], dict[str, np.ndarray]]:
    """The table rows and the ``(n, H, W)`` float32 maps of one streamed batch (unreadable images:
    a row with its error and a NaN map)."""
    n = len(batch)
    rows: list[dict[str, Any]] = []
    maps: dict[str, np.ndarray] = {}
    height, width = model.preprocessing.input_size
    if n:
        logits = model.logits(batch.inputs)
        preds = logits.argmax(1)
        if target == "pred":
            targets = preds
        elif target == "true":
            targets = batch.labels
        else:
            targets = torch.full((n,), int(target), dtype=torch.long)
        scores = logits.softmax(1).gather(1, targets[:, None])[:, 0]
        wanted = [int(t) for t in targets]
        for m in methods:
            maps[m.name] = m.explain(batch.inputs, target=wanted).attributions.detach().float().cpu().numpy()
        has_mask = batch.has_mask if batch.has_mask is not None else torch.zeros(n, dtype=torch.bool)
        for i in range(n):
            index = int(batch.indices[i])
            mask = batch.masks[i, 0].numpy() > 0.5 if batch.masks is not None and has_mask[i] else None
            row: dict[str, Any] = {
                "index": index,
                "path": str(samples[index].path),
                "label": int(batch.labels[i]),
                "label_name": _name(data.class_names, int(batch.labels[i])),
                "prediction": int(preds[i]),
                "prediction_name": model.class_names[int(preds[i])],
                "target": wanted[i],
                "target_name": model.class_names[wanted[i]],
                "score": float(scores[i]),
                "has_mask": bool(has_mask[i]),
                "error": None,
            }
            for m in methods:
                row |= {f"{m.name}_{k}": v for k, v in map_numbers(maps[m.name][i], mask).items()}
            rows.append(row)
    for index, message in batch.failed:
        s = samples[index]
        rows.append(
            {
                "index": index,
                "path": str(s.path),
                "label": s.label,
                "label_name": _name(data.class_names, s.label),
                "prediction": -1,
                "target": -1,
                "score": float("nan"),
                "has_mask": False,
                "error": message,
            }
        )
    for m in methods:
        nan = np.full((len(batch.failed), height, width), np.nan, dtype=np.float32)
        maps[m.name] = np.concatenate([maps.get(m.name, nan[:0]), nan]) if batch.failed else maps[m.name]
    return rows, maps


def _name(names: Sequence[str], index: int) -> str | None:
    return names[index] if 0 <= index < len(names) else None


def batch_of(rows: Sequence[dict[str, Any]], batch_size: int) -> int:
    """The store batch a streamed batch belongs to (all its rows fall in one)."""
    batches = {int(r["index"]) // batch_size for r in rows}
    if len(batches) != 1:
        raise RuntimeError(f"a streamed batch spans store batches {sorted(batches)}")
    return batches.pop()


def check_job(job: Job) -> None:
    check_positive_int("--batch-size", job.batch_size)
    if job.dtype not in DTYPES:
        raise InputError(f"--dtype must be one of {', '.join(DTYPES)}, got {job.dtype!r}")


def explain_dataset(
    job: Job,
    out: str | Path,
    *,
    engine: str = "local",
    force: bool = False,
    built: tuple[LoadedModel, list[Attribution]] | None = None,
    on_start: Callable[[int, int], None] | None = None,
    advance: Advance | None = None,
    ray_workers: int | None = None,
) -> dict[str, Any]:
    """Explain every image of ``job.data`` with every method of ``job.recipe`` into the store ``out``.

    Args:
        job: The data, model, methods and settings.
        out: The store folder (created; an existing store made with the same settings is resumed).
        engine: ``"local"`` (this process, decoding in worker processes) or ``"ray"`` (Ray Data).
        force: Replace a store made with other settings instead of refusing.
        built: The model and methods already built from ``job.recipe`` (saves loading them twice).
        on_start: Called with ``(images to do, images in all)`` before the first batch.
        advance: Called with the number of images of each batch written.
        ray_workers: Actors of the Ray engine (default: one per CPU Ray sees, or per GPU).

    Returns:
        The store's summary (also ``out/summary.json``).
    """
    check_job(job)
    if engine not in ENGINES:
        raise InputError(f"--engine must be one of {', '.join(ENGINES)}, got {engine!r}")
    data = read_data(job.data, split=job.split, masks=job.masks)
    model, methods = built if built is not None else job.recipe.build()
    target = resolve_target(job.target, model, data)
    height, width = model.preprocessing.input_size
    layout = Layout(
        count=len(data.samples),
        height=height,
        width=width,
        batch_size=job.batch_size,
        methods=tuple(m.name for m in methods),
        class_names=tuple(data.class_names),
        dtype=job.dtype,
    )
    store = Store.open(out, layout, settings_of(job, model, methods, data), force=force)
    todo = store.todo()
    if on_start is not None:
        on_start(sum(len(layout.rows(b)) for b in todo), layout.count)
    if engine == "ray" and todo:
        from cnnlens.dataset_explain.ray_engine import run_ray

        run_ray(job, data, target, store, todo, workers=ray_workers, advance=advance)
    elif todo:
        order = [i for b in todo for i in layout.rows(b)]
        want_masks = any(s.mask is not None for s in data.samples)
        for batch in stream_batches(
            data.samples,
            model.preprocessing,
            batch_size=job.batch_size,
            workers=job.workers,
            masks=want_masks,
            order=order,
        ):
            rows, maps = explain_batch(model, methods, batch, data.samples, data, target)
            store.write_batch(batch_of(rows, job.batch_size), rows, maps)
            if advance is not None:
                advance(len(rows))
    return store.finish()


__all__ = ["ENGINES", "Job", "Recipe", "explain_dataset"]
