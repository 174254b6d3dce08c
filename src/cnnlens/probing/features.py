"""A layer's activation vectors over a dataset, and the dataset images nearest to a query image in that
feature space and in pixel space (seed 003: "visualize nearest neighbors according to activation
vectors").

Feature vectors are a layer's output, global-average-pooled over positions (``pool="avg"``) or
flattened (``pool="flatten"``; the only choice for a layer without positions, e.g. a linear layer).
The neighbour search streams the dataset once with a running top-k, so it keeps no features.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from cnnlens.attribution.core.base import ModelLike
from cnnlens.data.stream import Batch
from cnnlens.errors import InputError
from cnnlens.models.layers import resolve_layer
from cnnlens.probing.stream import Progress, RunningTopK, module_of, pass_batches, streaming
from cnnlens.validation import check_positive_int

POOLS = ("avg", "flatten")
#: ``cosine``: cosine similarity of the feature vectors; ``l2``: Euclidean distance.
METRICS = ("cosine", "l2")
#: Side of the images compared in pixel space (the preprocessed image, area-downsampled).
PIXEL_SIZE = 32


def pooled(a: torch.Tensor, pool: str) -> torch.Tensor:
    """``(N, D)`` vectors of a layer output: mean over positions (``avg``, 4-d outputs) or flattened."""
    if pool not in POOLS:
        raise InputError(f"pool must be one of {', '.join(POOLS)}, got {pool!r}")
    if pool == "avg" and a.ndim == 4:
        return a.mean(dim=(2, 3))
    return a.flatten(1)


def pixels(x: torch.Tensor, size: int = PIXEL_SIZE) -> torch.Tensor:
    """``(N, C*s*s)`` the images area-downsampled to at most ``size`` pixels a side, flattened."""
    h, w = x.shape[-2:]
    if max(h, w) > size:
        x = F.adaptive_avg_pool2d(x.float(), (min(h, size), min(w, size)))
    return x.float().flatten(1).cpu()


@dataclass
class Features:
    """A layer's feature vectors for every readable image of a dataset.

    Attributes:
        layer: The layer's dotted name.
        values: ``(N, D)`` float32 feature vectors.
        labels: ``(N,)`` class indices (``-1``: unlabelled).
        indices: ``(N,)`` positions of the images in the dataset.
        thumbnails: ``(T, 3, t, t)`` uint8 pictures of the first ``T`` images (when asked for).
        failed: ``(index, message)`` of the images that could not be read.
    """

    layer: str
    values: torch.Tensor
    labels: torch.Tensor
    indices: torch.Tensor
    thumbnails: torch.Tensor | None = None
    failed: list[tuple[int, str]] = field(default_factory=list)


def extract_features(
    model: ModelLike,
    batches: Iterable[Batch],
    layer: str | nn.Module,
    *,
    pool: str = "avg",
    thumbnail: Callable[[torch.Tensor], torch.Tensor] | None = None,
    thumbnails: int = 0,
    progress: Progress | None = None,
) -> Features:
    """One pass over ``batches`` collecting the layer's pooled activations.

    Args:
        model: The classifier.
        batches: The dataset (:func:`~cnnlens.data.stream.stream_batches`, :func:`batches_of`).
        layer: Dotted name or module.
        pool: ``avg`` or ``flatten`` (:func:`pooled`).
        thumbnail: Preprocessed ``(N, C, H, W)`` -> ``(N, 3, t, t)`` uint8 pictures.
        thumbnails: How many images (the first ones) get a thumbnail.
        progress: Called with the number of images of each batch.

    Raises:
        InputError: Unknown pool, no image read.
    """
    pooled(torch.zeros(1, 1, 1, 1), pool)  # checks pool before the pass
    values, labels, indices, thumbs, failed = [], [], [], [], []
    taken = 0
    name, _ = resolve_layer(module_of(model), layer)
    with streaming(model, layer, maps=False) as outputs:
        for batch in pass_batches(batches, progress):
            failed += batch.failed
            values.append(pooled(outputs(batch.inputs), pool))
            labels.append(batch.labels)
            indices.append(batch.indices)
            if thumbnail is not None and taken < thumbnails:
                part = batch.inputs[: thumbnails - taken]
                thumbs.append(thumbnail(part))
                taken += len(part)
    if not values:
        raise InputError("no image could be read: no features")
    return Features(
        name,
        torch.cat(values),
        torch.cat(labels),
        torch.cat(indices),
        torch.cat(thumbs) if thumbs else None,
        failed,
    )


def _distance(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """``(N, M)`` Euclidean distances, computed exactly (0 between equal rows, unlike the matmul form)."""
    return torch.cdist(a, b, compute_mode="donot_use_mm_for_euclid_dist")


@dataclass
class Neighbours:
    """The dataset images nearest to a query, in feature space and in pixel space.

    Attributes:
        layer: The feature layer.
        metric: ``cosine`` (scores are similarities, higher is nearer) or ``l2`` (distances).
        feature: ``(dataset index, score)`` of the k nearest in feature space, nearest first.
        pixel: ``(dataset index, L2 distance)`` of the k nearest in pixel space, nearest first.
        labels: Dataset index -> class index of every image listed.
        images_seen: Images compared.
        failed: ``(index, message)`` of the images that could not be read.
    """

    layer: str
    metric: str
    feature: list[tuple[int, float]]
    pixel: list[tuple[int, float]]
    labels: dict[int, int]
    images_seen: int
    failed: list[tuple[int, str]] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return {
            "layer": self.layer,
            "metric": self.metric,
            "pixel_metric": f"l2 on the preprocessed image at <= {PIXEL_SIZE} px",
            "feature": [{"index": i, "score": s, "label": self.labels[i]} for i, s in self.feature],
            "pixel": [{"index": i, "distance": s, "label": self.labels[i]} for i, s in self.pixel],
            "images_seen": self.images_seen,
        }


def nearest_neighbours(
    model: ModelLike,
    query: torch.Tensor,
    batches: Iterable[Batch],
    layer: str | nn.Module,
    *,
    k: int = 8,
    metric: str = "cosine",
    pool: str = "avg",
    progress: Progress | None = None,
) -> Neighbours:
    """The ``k`` dataset images nearest to ``query``: one streaming pass, a running top-k each for the
    feature space (``metric`` on :func:`pooled` activations) and the pixel space (L2 on :func:`pixels`).

    Args:
        model: The classifier.
        query: ``(1, C, H, W)`` or ``(C, H, W)`` preprocessed query image.
        batches: The dataset.
        layer: Dotted name or module of the feature layer.
        k: Neighbours to return.
        metric: ``cosine`` or ``l2``.
        pool: ``avg`` or ``flatten``.
        progress: Called with the number of images of each batch.
    """
    check_positive_int("k", k)
    if metric not in METRICS:
        raise InputError(f"metric must be one of {', '.join(METRICS)}, got {metric!r}")
    if query.ndim == 3:
        query = query.unsqueeze(0)
    name, _ = resolve_layer(module_of(model), layer)
    feat_top, pix_top = RunningTopK(1, k), RunningTopK(1, k)
    labels: dict[int, int] = {}
    seen, failed = 0, []
    with streaming(model, layer, maps=False) as outputs:
        q = pooled(outputs(query), pool)
        qn = F.normalize(q, dim=1)
        qp = pixels(query)
        for batch in pass_batches(batches, progress):
            failed += batch.failed
            f = pooled(outputs(batch.inputs), pool)
            if f.shape[1] != q.shape[1]:
                raise InputError(f"the dataset images give {f.shape[1]} features, the query {q.shape[1]}")
            score = F.normalize(f, dim=1) @ qn.T if metric == "cosine" else -_distance(f, q)
            feat_top.update(score, batch.indices)
            pix = pixels(batch.inputs)
            if pix.shape[1] != qp.shape[1]:
                raise InputError("the dataset images and the query differ in size after preprocessing")
            pix_top.update(-_distance(pix, qp), batch.indices)
            labels.update(zip(batch.indices.tolist(), batch.labels.tolist()))
            seen += len(batch)
    if not seen:
        raise InputError("no image could be read: no neighbours")
    feature = [(i, v if metric == "cosine" else -v) for v, i, _ in feat_top.rows(0)]
    pixel = [(i, -v) for v, i, _ in pix_top.rows(0)]
    kept = {i for i, _ in feature + pixel}
    return Neighbours(name, metric, feature, pixel, {i: labels[i] for i in kept}, seen, failed)
