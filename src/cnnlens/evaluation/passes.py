"""The forward passes of the perturbation metrics, queued and run in large batches.

Deletion, insertion and top-k drop each score a few images made from one preprocessed image, a
baseline and the pixel ranks of a map (:func:`~cnnlens.evaluation.faithfulness.perturbation_curve`).
A :class:`ScoreQueue` collects those images for many samples and metrics before running any, then
evaluates them through the pass runner (:class:`~cnnlens.attribution.engine.runner.PassRunner`, float32
logits, the fused inference network where it applies) in chunks of ``batch_size``, so the benchmark
runs a few large forward batches instead of one small one per (image, method, metric).

What is the same for several requests is computed once: the pixel ranks of a map (sorted once), the
baseline of an input, and every image that does not depend on the ranks: the clean image (deletion's
first point, insertion's last, top-k drop's reference) and the full baseline (deletion's last point,
insertion's first), shared by every method explained on that input. A perturbed image asked for twice
(top-k drop at 20% and deletion's 20% point with the same baseline) is also evaluated once. The
perturbed images are built chunk by chunk, so memory stays bounded by ``batch_size``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from cnnlens.attribution.engine.runner import PassRunner, target_scores
from cnnlens.data.transforms import Preprocessing
from cnnlens.errors import InputError
from cnnlens.models.hooks import preserved_state
from cnnlens.validation import check_positive_int, check_score

#: Images per forward pass of a queue (the benchmark's; a metric called on one sample uses its own).
QUEUE_BATCH_SIZE = 64


@dataclass(frozen=True)
class _Blend:
    """One perturbed image: ``end`` where ``ranks < count``, ``start`` elsewhere."""

    start: torch.Tensor
    end: torch.Tensor
    ranks: torch.Tensor
    count: int

    def build(self) -> torch.Tensor:
        return torch.where((self.ranks < self.count)[None, None], self.end, self.start)


class ScoreQueue:
    """Images to score with one model, queued, then evaluated in chunks by :meth:`run`.

    Args:
        model: The classifier every queued image is scored with.
        batch_size: Images per forward pass.

    Usage: queue rows with :meth:`image` and :meth:`blend` (each returns a row index), call :meth:`run`
    once, then read :meth:`scores`. Rows are keyed by the identity of the tensors they are made of, so
    pass the same tensor objects (:meth:`ranks` and :meth:`baseline` memoise theirs) to share rows.
    """

    def __init__(self, model: nn.Module, *, batch_size: int = QUEUE_BATCH_SIZE):
        self.model = model
        self.batch_size = check_positive_int("batch_size", batch_size)
        self._rows: list[torch.Tensor | _Blend] = []
        self._index: dict[tuple[Any, ...], int] = {}
        self._memo: dict[tuple[Any, ...], torch.Tensor] = {}
        self._keep: list[Any] = []  # the objects whose ids key the memos stay alive while queued
        self._logits: torch.Tensor | None = None
        self.forwards = 0  # images evaluated by the last run (after sharing)

    def __len__(self) -> int:
        return len(self._rows)

    # -- shared pieces ---------------------------------------------------------------------------

    def _memoised(self, key: tuple[Any, ...], owner: Any, make: Callable[[], torch.Tensor]) -> torch.Tensor:
        if key not in self._memo:
            self._memo[key] = make()
            self._keep.append(owner)
        return self._memo[key]

    def shared(self, inputs: Any, x: torch.Tensor) -> torch.Tensor:
        """The tensor first given for the input object ``inputs`` (``x`` the first time): every
        request made from one sample's input then shares its clean-image row."""
        return self._memoised(("input", id(inputs)), inputs, lambda: x)

    def ranks(self, attribution: Any, make: Callable[[], torch.Tensor]) -> torch.Tensor:
        """The pixel ranks of ``attribution`` (the map object a sample holds), made once by ``make``."""
        return self._memoised(("ranks", id(attribution)), attribution, make)

    def baseline(
        self,
        inputs: Any,
        kind: str,
        preprocessing: Preprocessing | None,
        blur_sigma: float,
        make: Callable[[], torch.Tensor],
    ) -> torch.Tensor:
        """The ``kind`` baseline of ``inputs`` (the input object a sample holds), made once by ``make``."""
        norm = None if preprocessing is None else (tuple(preprocessing.mean), tuple(preprocessing.std))
        return self._memoised(("baseline", id(inputs), kind, blur_sigma, norm), inputs, make)

    # -- rows --------------------------------------------------------------------------------------

    def image(self, x: torch.Tensor) -> int:
        """Queue the ``(1, C, H, W)`` image ``x`` (once per tensor object); its row index."""
        key = ("image", id(x))
        if key not in self._index:
            self._check_open()
            self._index[key] = len(self._rows)
            self._rows.append(x)
            self._keep.append(x)
        return self._index[key]

    def blend(self, start: torch.Tensor, end: torch.Tensor, ranks: torch.Tensor, count: int) -> int:
        """Queue ``end`` on the ``count`` top-ranked pixels and ``start`` elsewhere; its row index.

        No pixel changed is ``start`` itself and every pixel changed is ``end`` itself: those rows
        are shared with every request of the same images.
        """
        if count <= 0:
            return self.image(start)
        if count >= ranks.numel():
            return self.image(end)
        key = ("blend", id(start), id(end), id(ranks), int(count))
        if key not in self._index:
            self._check_open()
            self._index[key] = len(self._rows)
            self._rows.append(_Blend(start, end, ranks, int(count)))
            self._keep += [start, end, ranks]
        return self._index[key]

    def _check_open(self) -> None:
        if self._logits is not None:
            raise RuntimeError("this ScoreQueue has already run; queue rows before run()")

    # -- running -----------------------------------------------------------------------------------

    def run(self) -> None:
        """Evaluate every queued row: float32 logits through the pass runner, ``batch_size`` at a time,
        the model's train/eval state and ``requires_grad`` flags restored afterwards."""
        self._check_open()
        device = next((p.device for p in self.model.parameters()), torch.device("cpu"))
        order = sorted(range(len(self._rows)), key=lambda i: self._shape(i))  # equal shapes stack
        logits: list[torch.Tensor | None] = [None] * len(self._rows)
        with preserved_state(self.model, freeze_parameters=True), torch.inference_mode():
            runner = PassRunner(self.model, device, precision="fp32")
            for start in range(0, len(order), self.batch_size):
                chunk = order[start : start + self.batch_size]
                groups: dict[tuple[int, ...], list[int]] = {}
                for i in chunk:
                    groups.setdefault(self._shape(i), []).append(i)
                for rows in groups.values():
                    batch = torch.cat([self._build(i).to(device) for i in rows])
                    for i, row in zip(rows, runner.logits(batch, len(batch)).cpu(), strict=True):
                        logits[i] = row
        self.forwards = len(self._rows)
        self._logits = torch.stack([t for t in logits if t is not None]) if self._rows else torch.empty(0, 0)
        # the images and the identity keys go (an id may be reused once its object is freed)
        self._rows, self._keep, self._memo, self._index = [], [], {}, {}

    def _shape(self, i: int) -> tuple[int, ...]:
        row = self._rows[i]
        return tuple((row.start if isinstance(row, _Blend) else row).shape[1:])

    def _build(self, i: int) -> torch.Tensor:
        row = self._rows[i]
        return row.build() if isinstance(row, _Blend) else row

    def scores(self, rows: list[int], target: int, kind: str = "probability") -> list[float]:
        """The ``kind`` score (``"probability"`` or ``"logit"``) of ``target`` for each row."""
        if self._logits is None:
            raise RuntimeError("ScoreQueue.scores before run()")
        check_score(kind)
        picked = self._logits[rows]
        t = torch.full((len(rows),), int(target), dtype=torch.long)
        return [float(v) for v in target_scores(picked, t, kind)]


def check_queue_model(queue: ScoreQueue, model: nn.Module) -> None:
    """A sample's model must be the queue's: the rows of one queue are scored by one network."""
    if queue.model is not model:
        raise InputError("a ScoreQueue scores the images of one model; this sample has another")
