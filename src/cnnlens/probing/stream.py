"""What the dataset-wide probing tools share: one pass of batches through a model held in its probing
state, a layer's output per batch, and a running top-k that keeps only ``(value, image, position)``.

The passes take any iterable of :class:`~cnnlens.data.stream.Batch` (what
:func:`~cnnlens.data.stream.stream_batches` yields for a dataset on disk, :func:`batches_of` for
tensors already in memory), so memory does not grow with the number of images.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager

import torch
from torch import nn

from cnnlens.attribution.core.base import ModelLike, check_inputs, first_conv_channels
from cnnlens.attribution.engine.padding import same_padding_in_conv
from cnnlens.attribution.engine.runner import feature_map
from cnnlens.data.stream import Batch
from cnnlens.errors import InputError
from cnnlens.models.hooks import capture_outputs, preserved_state
from cnnlens.models.layers import resolve_layer
from cnnlens.models.loaded import LoadedModel
from cnnlens.validation import check_positive_int

#: Called after each batch with the number of images it consumed (read or failed).
Progress = Callable[[int], None]


def batches_of(
    inputs: torch.Tensor,
    labels: torch.Tensor | Sequence[int] | None = None,
    *,
    batch_size: int = 32,
    order: Sequence[int] | None = None,
) -> Iterator[Batch]:
    """Batches of preprocessed images already in memory, in the form :func:`stream_batches` yields.

    Args:
        inputs: ``(N, C, H, W)`` preprocessed images.
        labels: ``(N,)`` class indices (default ``-1``: unlabelled).
        batch_size: Images per batch.
        order: Which images, in which order (default all); :attr:`Batch.indices` refers to ``inputs``.
    """
    check_positive_int("batch_size", batch_size)
    n = len(inputs)
    lab = torch.full((n,), -1, dtype=torch.long) if labels is None else torch.as_tensor(labels).long()
    chosen = torch.arange(n) if order is None else torch.as_tensor(list(order), dtype=torch.long)
    for part in chosen.split(batch_size):
        yield Batch(inputs=inputs[part], labels=lab[part], indices=part)


def module_of(model: ModelLike) -> nn.Module:
    return model.module if isinstance(model, LoadedModel) else model


@contextmanager
def streaming(
    model: ModelLike, layer: str | nn.Module, *, maps: bool = True
) -> Iterator[Callable[[torch.Tensor], torch.Tensor]]:
    """Hold the model in its probing state (eval mode, parameters frozen, timm same-padding convs
    padding-free; all restored on exit) for a whole pass, and yield ``outputs(x)``: the output of
    ``layer`` for a batch, computed without gradients, as float32 on the CPU.

    Args:
        model: The classifier.
        layer: Dotted name or module.
        maps: Require an ``(N, C, h, w)`` feature map (else any tensor output, e.g. a linear layer's).

    Raises:
        UnknownNameError: No layer has that name.
        InputError: The layer does not output a feature map (with ``maps``) or did not run.
    """
    module = module_of(model)
    name, target = resolve_layer(module, layer)
    channels = first_conv_channels(module)
    param = next(module.parameters(), None)
    device = param.device if param is not None else torch.device("cpu")

    checked: list[tuple[int, ...]] = []

    def outputs(x: torch.Tensor) -> torch.Tensor:
        # the first batch gets every check (finite values too); later ones the same layout only:
        # a full isfinite scan per batch costs ~15% of a small network's forward pass
        if not checked or tuple(x.shape[1:]) != checked[0] or not x.is_floating_point():
            x = check_inputs(x, channels)
            checked[:] = [tuple(x.shape[1:])]
        x = x.to(device)
        with torch.inference_mode(), capture_outputs({name: target}) as store:
            module(x)
            if maps or name not in store:
                return feature_map(store, name, "this probing tool").float().cpu()
            return store[name].float().cpu()

    with preserved_state(module, freeze_parameters=True), same_padding_in_conv(module):
        yield outputs


def pass_batches(batches: Iterable[Batch], progress: Progress | None) -> Iterator[Batch]:
    """The non-empty batches of a pass, reporting progress (failed images count as done)."""
    for batch in batches:
        if progress is not None:
            progress(len(batch) + len(batch.failed))
        if len(batch):
            yield batch


class RunningTopK:
    """For each of ``units`` units, the ``k`` largest values seen so far, with the image each came from
    and its position: ``3 * units * k`` numbers, whatever the number of images streamed.

    Attributes:
        values: ``(units, k)`` float32, decreasing along a row (``-inf`` where fewer were seen);
            equal values in increasing image order.
        images: ``(units, k)`` image indices (``-1`` where none).
        positions: ``(units, k)`` flat positions in the feature map (``-1`` where none).
    """

    def __init__(self, units: int, k: int) -> None:
        check_positive_int("k", k)
        check_positive_int("units", units)
        self.k = k
        self.values = torch.full((units, k), float("-inf"))
        self.images = torch.full((units, k), -1, dtype=torch.long)
        self.positions = torch.full((units, k), -1, dtype=torch.long)

    def update(
        self, values: torch.Tensor, images: torch.Tensor, positions: torch.Tensor | None = None
    ) -> None:
        """Offer one value per image and unit.

        Shape:
            values: ``(N, units)``; images: ``(N,)``; positions: ``(N, units)`` (default ``0``).
        """
        if not len(values):
            return
        vals = torch.cat([self.values, values.float().T], dim=1)
        imgs = torch.cat([self.images, images.long().expand(values.shape[1], -1)], dim=1)
        pos = torch.zeros_like(values, dtype=torch.long) if positions is None else positions.long()
        poss = torch.cat([self.positions, pos.T], dim=1)
        # largest first; ties go to the lower image index, so the result does not depend on batching
        by_image = torch.argsort(imgs, dim=1, stable=True)
        vals, imgs, poss = (torch.gather(t, 1, by_image) for t in (vals, imgs, poss))
        keep = torch.argsort(vals, dim=1, descending=True, stable=True)[:, : self.k]
        self.values, self.images, self.positions = (torch.gather(t, 1, keep) for t in (vals, imgs, poss))

    @property
    def nbytes(self) -> int:
        """Memory held by the running top-k (independent of the number of images streamed)."""
        return sum(t.element_size() * t.nelement() for t in (self.values, self.images, self.positions))

    def rows(self, unit: int) -> list[tuple[float, int, int]]:
        """``(value, image, position)`` of one unit's winners, strongest first (only those seen)."""
        return [
            (float(v), int(i), int(p))
            for v, i, p in zip(self.values[unit], self.images[unit], self.positions[unit])
            if i >= 0
        ]


def check_units(units: Sequence[int] | None, channels: int, layer: str) -> list[int]:
    """``units`` checked against a layer's ``channels`` (``None``: all of them)."""
    if units is None:
        return list(range(channels))
    chosen = list(units)
    if not chosen:
        raise InputError("units: give at least one channel index")
    bad = [u for u in chosen if not 0 <= u < channels]
    if bad:
        raise InputError(f"units {bad} are not in layer {layer!r}, which has channels 0..{channels - 1}")
    if len(set(chosen)) != len(chosen):
        raise InputError(f"units {chosen}: each unit once")
    return chosen
