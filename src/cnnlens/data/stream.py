"""Streaming a dataset through a model: images decoded and preprocessed in worker processes
(overlapping the model's compute), batched, with unreadable images reported instead of ending
the pass.

Every tool that makes one pass over a whole dataset (``cnnlens probe patches|neighbors|embed|dissect``,
``cnnlens explain-dataset``, dataset-level experiments) reads it through :func:`stream_batches`, so
they share one decoder, one batching rule and one treatment of broken files.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from functools import partial
from typing import Any

import torch
from PIL import Image
from torch.utils.data import DataLoader, Dataset

from cnnlens.data.dataset import eval_transform
from cnnlens.data.folders import Sample
from cnnlens.data.images import load_image
from cnnlens.data.transforms import Preprocessing
from cnnlens.errors import CnnlensError, InputError
from cnnlens.validation import check_int_at_least, check_positive_int

log = logging.getLogger(__name__)

#: Below this many images a pass decodes in the main process (starting workers costs more).
WORKERS_FROM = 64


@dataclass
class Batch:
    """One batch of a stream.

    Attributes:
        inputs: ``(N, C, H, W)`` preprocessed images (N may be 0 when every image of the batch failed).
        labels: ``(N,)`` class indices (``-1`` for unlabelled images).
        indices: ``(N,)`` positions of the images in the sample list given to :func:`stream_batches`.
        masks: ``(N, 1, H, W)`` masks in {0, 1} when asked for (zeros where an image has none).
        has_mask: ``(N,)`` which images have a mask (when asked for).
        failed: ``(index, message)`` of the images of this batch that could not be read.
    """

    inputs: torch.Tensor
    labels: torch.Tensor
    indices: torch.Tensor
    masks: torch.Tensor | None = None
    has_mask: torch.Tensor | None = None
    failed: list[tuple[int, str]] = field(default_factory=list)

    def __len__(self) -> int:
        return int(self.inputs.shape[0])


class _Items(Dataset[dict[str, Any]]):
    def __init__(
        self, samples: Sequence[Sample], order: Sequence[int], pre: Preprocessing, masks: bool
    ) -> None:
        self.samples = samples
        self.order = list(order)
        self.transform = eval_transform(pre)
        self.masks = masks

    def __len__(self) -> int:
        return len(self.order)

    def __getitem__(self, i: int) -> dict[str, Any]:
        index = self.order[i]
        s = self.samples[index]
        try:
            image = load_image(s.path)
            mask = None
            if self.masks and s.mask is not None:
                with Image.open(s.mask) as m:
                    mask = m.convert("L")
            x, m = self.transform(image, mask)
        except (CnnlensError, OSError, ValueError) as err:
            return {"index": index, "error": f"{s.path}: {err}" if str(s.path) not in str(err) else str(err)}
        item: dict[str, Any] = {"index": index, "image": x, "label": s.label}
        if self.masks:
            item["mask"] = m if m is not None else torch.zeros(1, *x.shape[-2:])
            item["has_mask"] = m is not None
        return item


def _collate(items: list[dict[str, Any]], pre: Preprocessing, masks: bool) -> Batch:
    ok = [it for it in items if "error" not in it]
    failed = [(int(it["index"]), str(it["error"])) for it in items if "error" in it]
    inputs = torch.stack([it["image"] for it in ok]) if ok else torch.empty(0, 3, *pre.input_size)
    batch = Batch(
        inputs=inputs,
        labels=torch.tensor([int(it["label"]) for it in ok], dtype=torch.long),
        indices=torch.tensor([int(it["index"]) for it in ok], dtype=torch.long),
        failed=failed,
    )
    if masks:
        batch.masks = torch.stack([it["mask"] for it in ok]) if ok else torch.empty(0, 1, *pre.input_size)
        batch.has_mask = torch.tensor([bool(it["has_mask"]) for it in ok], dtype=torch.bool)
    return batch


def default_workers(count: int) -> int:
    """Decoding processes for a pass over ``count`` images: none for small passes, else up to 4
    (never more than the CPUs this process may use)."""
    if count < WORKERS_FROM:
        return 0
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    return max(1, min(4, cpus))


def stream_batches(
    samples: Sequence[Sample],
    preprocessing: Preprocessing,
    *,
    batch_size: int = 32,
    workers: int | None = None,
    masks: bool = False,
    order: Sequence[int] | None = None,
) -> Iterator[Batch]:
    """Batches of the preprocessed images of ``samples``, in order, decoded ahead in ``workers``
    processes (``None``: :func:`default_workers`).

    Args:
        samples: The images (e.g. ``read_data(...).samples``).
        preprocessing: The model's preprocessing (resize, crop, normalise).
        batch_size: Images per batch (the last one may be smaller; failures make batches smaller).
        workers: Decoding processes (0: decode in this process).
        masks: Also return the masks (and which images have one).
        order: Which samples, in which order (default all, in order); e.g. the ones a resumed run
            has not done yet. :attr:`Batch.indices` refers to positions in ``samples``.

    Each unreadable image is logged once and listed in :attr:`Batch.failed`; the pass goes on.
    """
    check_positive_int("batch_size", batch_size)
    chosen = list(range(len(samples))) if order is None else list(order)
    for i in chosen:
        if not 0 <= i < len(samples):
            raise InputError(f"order: index {i} is outside the {len(samples)} samples")
    n_workers = default_workers(len(chosen)) if workers is None else workers
    check_int_at_least("workers", n_workers, 0)
    loader = DataLoader(
        _Items(samples, chosen, preprocessing, masks),
        batch_size=batch_size,
        shuffle=False,
        num_workers=n_workers,
        collate_fn=partial(_collate, pre=preprocessing, masks=masks),
        persistent_workers=False,
        prefetch_factor=4 if n_workers else None,
    )
    for batch in loader:
        for _, message in batch.failed:
            log.warning("skipped %s", message)
        yield batch
