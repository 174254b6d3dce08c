"""Network dissection: which units of a layer detect which concepts (Bau et al. 2017).

For every unit ``k`` of a layer:

1. the threshold ``T_k`` is the top ``quantile`` (0.005) of the unit's activations over every
   location of every image of the dataset (first pass);
2. each image's activation map is upsampled (bilinear) to the input size and thresholded,
   ``M_k(x) = S_k(x) > T_k``; with every concept's mask ``L_c(x)`` the intersections and unions are
   summed over the dataset (second pass): ``IoU_kc = sum_x |M_k(x) & L_c(x)| / sum_x |M_k(x) | L_c(x)|``;
3. the unit detects its best concept when that IoU exceeds 0.04.

The quantile is read from a per-unit histogram of fixed size (:class:`UnitHistogram`), so memory does
not grow with the dataset: 2,048 bins per unit whose range doubles (merging bin pairs) whenever a
batch falls outside it. The threshold is then exact up to one bin (at most 1/1,024 of the unit's
value range), interpolated linearly inside it.

References:
    Bau, Zhou, Khosla, Oliva, Torralba. Network Dissection: Quantifying Interpretability of Deep
    Visual Representations. CVPR 2017.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F

from cnnlens.attribution.core.base import ModelLike
from cnnlens.data.concepts import ConceptMasks, ConceptSet
from cnnlens.data.folders import Sample
from cnnlens.data.stream import stream_batches
from cnnlens.data.transforms import Preprocessing
from cnnlens.errors import InputError
from cnnlens.models.loaded import LoadedModel
from cnnlens.probing.common import probing
from cnnlens.probing.units import layer_output
from cnnlens.validation import check_positive_int, check_real

#: Bins of the per-unit activation histogram (:class:`UnitHistogram`).
BINS = 2048
#: A unit is a detector of its best concept above this IoU (Bau et al. 2017).
DETECTOR_IOU = 0.04
#: Top quantile of the activations that marks where a unit fires (Bau et al. 2017).
TOP_QUANTILE = 0.005
#: Elements of the upsampled ``(n, K, H, W)`` maps thresholded at once (bounds the memory of a batch).
CHUNK_ELEMENTS = 1 << 25

Progress = Callable[[str, int], None]


class UnitHistogram:
    """A histogram of each unit's values over a stream, in fixed memory (``units x bins`` counts).

    Each unit's range starts as its first batch's span and doubles, merging pairs of bins, whenever
    a later value falls outside (downwards or upwards), so no pass over the data is needed to fix it.

    Args:
        units: Number of units.
        bins: Bins per unit (even).
    """

    def __init__(self, units: int, bins: int = BINS) -> None:
        if bins < 2 or bins % 2:
            raise InputError(f"bins must be an even number >= 2, got {bins}")
        self.bins = bins
        self.counts = torch.zeros(units, bins, dtype=torch.float64)
        self.low = torch.zeros(units, dtype=torch.float64)
        self.width = torch.zeros(units, dtype=torch.float64)
        self.total = 0

    def add(self, values: torch.Tensor) -> None:
        """Count ``values`` of shape ``(units, M)``."""
        v = values.detach().to(torch.float64, copy=False)
        vmin, vmax = v.amin(1), v.amax(1)
        if self.total == 0:
            span = (vmax - vmin).clamp(min=1e-6 * max(float(vmax.abs().max()), 1.0))
            self.low, self.width = vmin.clone(), span * (1 + 1e-6) / self.bins
        self._grow(vmin, vmax)
        index = ((v - self.low[:, None]) / self.width[:, None]).floor().long().clamp_(0, self.bins - 1)
        index += torch.arange(len(v))[:, None] * self.bins
        self.counts.view(-1).index_add_(0, index.flatten(), torch.ones(index.numel(), dtype=torch.float64))
        self.total += v.shape[1]

    def _grow(self, vmin: torch.Tensor, vmax: torch.Tensor) -> None:
        half = self.bins // 2
        while True:
            below = vmin < self.low
            above = vmax >= self.low + self.bins * self.width
            grow = below | above
            if not grow.any():
                return
            pairs = self.counts[grow].view(-1, half, 2).sum(-1)
            merged = torch.zeros(len(pairs), self.bins, dtype=torch.float64)
            down = below[grow]
            merged[~down, :half] = pairs[~down]  # the old range is the lower half of the new one
            merged[down, half:] = pairs[down]  # ... or its upper half
            self.counts[grow] = merged
            self.low = torch.where(below, self.low - self.bins * self.width, self.low)
            self.width = torch.where(grow, 2 * self.width, self.width)

    def top_quantile(self, q: float) -> torch.Tensor:
        """Per unit, the value ``T`` with a fraction ``q`` of the counted values above it (linear
        inside the bin it falls in): ``(units,)``."""
        if self.total == 0:
            raise InputError("no values were counted")
        from_top = self.counts.flip(1).cumsum(1)
        target = q * self.total
        j = (from_top < target).sum(1).clamp(max=self.bins - 1)  # bins from the top before the crossing
        before = torch.where(j > 0, from_top.gather(1, (j - 1).clamp(min=0)[:, None])[:, 0], 0.0)
        b = self.bins - 1 - j
        count = self.counts.gather(1, b[:, None])[:, 0].clamp(min=1e-12)
        inside = ((target - before) / count).clamp(0, 1)
        return self.low + (b + 1 - inside) * self.width


@dataclass
class Dissection:
    """What :func:`dissect` found.

    Attributes:
        layer: The layer's dotted name.
        concepts: The concept names (columns of ``iou``).
        thresholds: ``(K,)`` each unit's activation threshold ``T_k``.
        iou: ``(K, C)`` each unit's IoU with each concept, summed over the dataset.
        quantile: The top quantile that set the thresholds.
        min_iou: The detector threshold.
        images: Images used.
        failed: ``(path, message)`` of images that could not be read.
        kinds: Kind of each concept, when known (shape, colour, texture...).
    """

    layer: str
    concepts: list[str]
    thresholds: torch.Tensor
    iou: torch.Tensor
    quantile: float
    min_iou: float
    images: int
    failed: list[tuple[str, str]]
    kinds: dict[str, str] | None = None

    @property
    def units(self) -> int:
        return int(self.iou.shape[0])

    @property
    def best(self) -> torch.Tensor:
        """``(K,)`` each unit's best concept (index)."""
        return self.iou.argmax(1)

    @property
    def best_iou(self) -> torch.Tensor:
        return self.iou.max(1).values

    @property
    def detectors(self) -> torch.Tensor:
        """``(K,)`` which units detect their best concept (IoU above :attr:`min_iou`)."""
        return self.best_iou > self.min_iou

    def histogram(self) -> dict[str, int]:
        """Detector units per concept (concepts with none left out), most first."""
        counts: dict[str, int] = {}
        for k in torch.nonzero(self.detectors).flatten().tolist():
            name = self.concepts[int(self.best[k])]
            counts[name] = counts.get(name, 0) + 1
        return dict(sorted(counts.items(), key=lambda kv: (-kv[1], kv[0])))

    def summary(self) -> str:
        """``"N/M units with IoU > 0.04"`` (seed 003's sentence)."""
        return f"{int(self.detectors.sum())}/{self.units} units with IoU > {self.min_iou:g}"

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form."""
        return {
            "layer": self.layer,
            "quantile": self.quantile,
            "min_iou": self.min_iou,
            "images": self.images,
            "failed": [list(f) for f in self.failed],
            "summary": self.summary(),
            "detectors": int(self.detectors.sum()),
            "units": self.units,
            "histogram": self.histogram(),
            "concepts": self.concepts,
            "kinds": self.kinds,
            "per_unit": [
                {
                    "unit": k,
                    "threshold": float(self.thresholds[k]),
                    "concept": self.concepts[int(self.best[k])],
                    "iou": float(self.best_iou[k]),
                    "detector": bool(self.detectors[k]),
                }
                for k in range(self.units)
            ],
            "iou": [[round(float(v), 6) for v in row] for row in self.iou],
        }


def dissect(
    model: ModelLike,
    samples: Sequence[Sample],
    concepts: ConceptSet,
    layer: str,
    *,
    preprocessing: Preprocessing | None = None,
    quantile: float = TOP_QUANTILE,
    min_iou: float = DETECTOR_IOU,
    batch_size: int = 32,
    workers: int | None = None,
    progress: Progress | None = None,
) -> Dissection:
    """Dissect ``layer`` of ``model`` on ``samples`` with the masks of ``concepts`` (two passes).

    Args:
        model: The classifier (a :class:`LoadedModel` brings its preprocessing).
        samples: The images.
        concepts: Their concept masks (:func:`~cnnlens.data.concepts.read_concepts`).
        layer: Dotted name of a layer with a ``(N, K, h, w)`` output.
        preprocessing: The model's preprocessing (needed for a plain ``nn.Module``).
        quantile: Top quantile of each unit's activations that marks where it fires, in (0, 1).
        min_iou: IoU above which a unit detects its best concept.
        batch_size: Images per forward pass.
        workers: Decoding processes (``None``: :func:`~cnnlens.data.stream.default_workers`).
        progress: Called with ``(description, images)`` after each batch.

    Raises:
        InputError: Bad settings, no samples, an unknown layer or one without a feature map, a
            concept mask whose size differs from its image's, or no image could be read.
    """
    quantile = check_real("quantile", quantile)
    if not 0.0 < quantile < 1.0:
        raise InputError(f"--quantile must be between 0 and 1 (exclusive), got {quantile:g}")
    min_iou = check_real("iou", min_iou)
    if not 0.0 <= min_iou < 1.0:
        raise InputError(f"--iou must be in [0, 1), got {min_iou:g}")
    check_positive_int("batch_size", batch_size)
    if not samples:
        raise InputError("no images to dissect")
    if len(concepts.files) != len(samples):
        raise InputError(f"{len(concepts.files)} concept entries for {len(samples)} images")
    if preprocessing is None:
        if not isinstance(model, LoadedModel):
            raise InputError("give preprocessing= for a plain nn.Module")
        preprocessing = model.preprocessing
    load_masks = ConceptMasks(concepts, samples, preprocessing)
    hist: UnitHistogram | None = None
    failed: list[tuple[str, str]] = []
    name = layer
    for maps, _ in _feature_maps(model, samples, preprocessing, layer, batch_size, workers, failed):
        if hist is None:
            hist = UnitHistogram(maps.shape[1])
        hist.add(maps.transpose(0, 1).reshape(maps.shape[1], -1))
        if progress:
            progress("dissect: thresholds", len(maps))
    if hist is None:
        raise InputError(f"none of the {len(samples)} images could be read")
    thresholds = hist.top_quantile(quantile).float()
    units, count = len(thresholds), len(concepts.names)
    inter = torch.zeros(units, count, dtype=torch.float64)
    fired = torch.zeros(units, dtype=torch.float64)
    area = torch.zeros(count, dtype=torch.float64)
    images = 0
    for maps, indices in _feature_maps(model, samples, preprocessing, layer, batch_size, workers, None):
        masks = load_masks(indices)
        for start, stop in _chunks(len(maps), units * masks.shape[-2] * masks.shape[-1]):
            up = F.interpolate(maps[start:stop], size=masks.shape[-2:], mode="bilinear", align_corners=False)
            on = (up > thresholds[None, :, None, None]).flatten(2).float()
            m = masks[start:stop].flatten(2).float()
            inter += torch.einsum("nkp,ncp->kc", on, m).double()
            fired += on.sum((0, 2)).double()
            area += m.sum((0, 2)).double()
        images += len(maps)
        if progress:
            progress("dissect: IoU", len(maps))
    union = fired[:, None] + area[None, :] - inter
    iou = torch.where(union > 0, inter / union.clamp(min=1), torch.zeros_like(inter)).float()
    if isinstance(model, LoadedModel):
        name = model.layer(layer)[0]
    return Dissection(
        name, list(concepts.names), thresholds, iou, quantile, min_iou, images, failed, concepts.kinds
    )


def _chunks(n: int, per_item: int) -> Iterator[tuple[int, int]]:
    step = max(1, CHUNK_ELEMENTS // max(per_item, 1))
    for start in range(0, n, step):
        yield start, min(n, start + step)


def _feature_maps(
    model: ModelLike,
    samples: Sequence[Sample],
    preprocessing: Preprocessing,
    layer: str,
    batch_size: int,
    workers: int | None,
    failed: list[tuple[str, str]] | None,
) -> Iterator[tuple[torch.Tensor, list[int]]]:
    """The layer's ``(n, K, h, w)`` output (on the CPU) and the sample indices of each batch."""
    for batch in stream_batches(samples, preprocessing, batch_size=batch_size, workers=workers):
        if failed is not None:
            failed += [(str(samples[i].path), message) for i, message in batch.failed]
        if not len(batch):
            continue
        with probing(model, batch.inputs) as probe, torch.no_grad():
            name, module = probe.layer(layer)
            out = layer_output(probe.module, name, module, probe.inputs)
        yield out.float().cpu(), batch.indices.tolist()
