"""Perturbation methods: change parts of the input and watch the target score."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import nn

from cnnlens.attribution.base import SCORES, Attributed, Attribution, LayerSpec, ModelLike
from cnnlens.attribution.engine import LayerSplit
from cnnlens.attribution.hooks import Handles
from cnnlens.attribution.registry import register


def check_score(score: str) -> str:
    """Validate a ``score=`` argument (``"logit"`` or ``"probability"``)."""
    if score not in SCORES:
        raise ValueError(f"score must be one of {', '.join(SCORES)}, got {score!r}")
    return score


def window_starts(size: int, window: int, stride: int) -> list[int]:
    """Start positions of a sliding window along one axis; the last window always reaches the end."""
    starts = list(range(0, max(size - window, 0) + 1, stride))
    if starts[-1] + window < size:
        starts.append(size - window)
    return starts


@register
class Occlusion(Attribution):
    """Occlusion: slide a square of constant value over the image and record the score drop.

    Each pixel gets the mean drop of the target score over the windows that cover it. Perturbed
    images are evaluated ``batch_size`` at a time.

    Shape:
        A ``(N, H, W)`` signed map: positive where hiding the pixels lowers the score.

    References:
        Zeiler, Fergus. Visualizing and Understanding Convolutional Networks. ECCV 2014.
    """

    name = "occlusion"
    quick_params: ClassVar[dict[str, Any]] = {"window": 48, "stride": 24}
    family = "perturbation"
    summary = "score drop when a sliding window is hidden"
    reference = "Zeiler & Fergus 2014"
    signed = True
    bf16_faithful = True

    def __init__(
        self,
        model: ModelLike,
        *,
        window: int = 32,
        stride: int = 16,
        fill: float = 0.0,
        score: str = "logit",
        batch_size: int | str | None = None,
        precision: str = "auto",
    ):
        super().__init__(model, batch_size=batch_size, precision=precision)
        if window < 1 or stride < 1:
            raise ValueError(f"window and stride must be positive, got window={window}, stride={stride}")
        self.window = window
        self.stride = stride
        self.fill = fill
        self.score = check_score(score)

    def windows(self, height: int, width: int, window: int | None = None) -> list[tuple[int, int, int, int]]:
        """Every window (of size ``window``, default ``self.window``) as ``(top, left, height, width)``."""
        size = window or self.window
        wh, ww = min(size, height), min(size, width)
        return [
            (y, x, wh, ww)
            for y in window_starts(height, wh, self.stride)
            for x in window_starts(width, ww, self.stride)
        ]

    def _batches(
        self, image: torch.Tensor, windows: list[tuple[int, int, int, int] | None], batch_size: int
    ) -> Iterator[torch.Tensor]:
        """``image`` with each window filled (``None``: nothing filled), ``batch_size`` at a time."""
        for i in range(0, len(windows), batch_size):
            chunk = windows[i : i + batch_size]
            batch = image.expand(len(chunk), *image.shape).clone()
            for j, box in enumerate(chunk):
                if box is not None:
                    y, x, h, w = box
                    batch[j, :, y : y + h, x : x + w] = self.fill
            yield batch

    def drops(
        self, image: torch.Tensor, target: int, windows: list[tuple[int, int, int, int]], batch_size: int
    ) -> torch.Tensor:
        """Target score of ``image`` minus its score with each window hidden: ``(len(windows),)``.

        The intact image rides along in the first batch (no separate forward pass for it).
        """
        boxes: list[tuple[int, int, int, int] | None] = [None, *windows]
        scores = self.scores_of(self._batches(image, boxes, batch_size), target, self.score)
        return scores[0] - scores[1:]

    @staticmethod
    def paint(
        values: torch.Tensor, windows: list[tuple[int, int, int, int]], size: tuple[int, int]
    ) -> torch.Tensor:
        """Each pixel's mean of ``values`` over the windows that cover it: ``(H, W)``."""
        total = torch.zeros(size, device=values.device)
        count = torch.zeros(size, device=values.device)
        for (y, x, h, w), v in zip(windows, values.tolist()):
            total[y : y + h, x : x + w] += v
            count[y : y + h, x : x + w] += 1
        return total / count.clamp(min=1)

    def _attribute(
        self, inputs: torch.Tensor, targets: torch.Tensor, batch_size: int
    ) -> torch.Tensor | Attributed:
        size = (inputs.shape[2], inputs.shape[3])
        windows = self.windows(*size)
        return torch.stack(
            [
                self.paint(self.drops(image, t, windows, batch_size), windows, size)
                for image, t in zip(inputs, targets.tolist())
            ]
        )


@register
class DoubleOcclusion(Occlusion):
    """Double occlusion (seed 002): one window held fixed while a second, smaller one slides.

    The fixed window (size ``fixed_window``) sits at ``fixed`` (``(top, left)`` in pixels) or, when
    ``fixed=None``, where single occlusion with that window size lowers the target score the most.
    The sliding window (size ``window``, step ``stride``) then visits every position with the fixed
    window hidden as well.

    Shape:
        A ``(N, H, W)`` signed map: each pixel's mean score drop ``f(x) - f(x without a and b)`` over
        the sliding windows ``b`` covering it, ``a`` being the fixed window. ``extras`` holds
        ``"single"`` (the ordinary occlusion map of the sliding window, ``f(x) - f(x without b)``),
        ``"interaction"`` (``f(x) - f(x without a) - f(x without b) + f(x without a and b)``: zero
        where the evidence under ``b`` adds to that under ``a``, negative where the two are
        redundant (either one suffices), positive where they are needed together), ``"fixed"``
        (``(N, 4)`` windows as top, left, height, width) and ``"fixed_drop"``.

    References:
        Fang. Convolutional Neural Network Interpretability Analysis for Image Classification (the
        two-slider occlusion experiment). Zeiler, Fergus. Visualizing and Understanding
        Convolutional Networks. ECCV 2014.
    """

    name = "double_occlusion"
    quick_params: ClassVar[dict[str, Any]] = {"window": 32, "stride": 32}
    summary = "score drop with a fixed window and a second sliding window hidden"
    reference = "Zeiler & Fergus 2014; seed 002 (Fang)"
    bf16_faithful = False

    def __init__(
        self,
        model: ModelLike,
        *,
        window: int = 16,
        stride: int = 16,
        fixed_window: int = 48,
        fixed: tuple[int, int] | None = None,
        fill: float = 0.0,
        score: str = "logit",
        batch_size: int | str | None = None,
        precision: str = "fp32",
    ):
        super().__init__(
            model,
            window=window,
            stride=stride,
            fill=fill,
            score=score,
            batch_size=batch_size,
            precision=precision,
        )
        if fixed_window < 1:
            raise ValueError(f"fixed_window must be positive, got {fixed_window}")
        if fixed is not None and (len(fixed) != 2 or min(fixed) < 0):
            raise ValueError(f"fixed must be None or (top, left) with non-negative pixels, got {fixed!r}")
        self.fixed_window = fixed_window
        self.fixed = fixed

    def _fixed_window(
        self, image: torch.Tensor, target: int, batch_size: int
    ) -> tuple[tuple[int, int, int, int], float]:
        height, width = image.shape[-2:]
        if self.fixed is not None:
            top, left = min(self.fixed[0], height - 1), min(self.fixed[1], width - 1)
            box = (top, left, min(self.fixed_window, height - top), min(self.fixed_window, width - left))
            return box, float(self.drops(image, target, [box], batch_size)[0])
        candidates = self.windows(height, width, self.fixed_window)
        drops = self.drops(image, target, candidates, batch_size)
        best = int(drops.argmax())
        return candidates[best], float(drops[best])

    def _attribute(self, inputs: torch.Tensor, targets: torch.Tensor, batch_size: int) -> Attributed:
        size = (inputs.shape[2], inputs.shape[3])
        windows = self.windows(*size)
        maps, singles, interactions, boxes, fixed_drops = [], [], [], [], []
        for image, t in zip(inputs, targets.tolist()):
            box, fixed_drop = self._fixed_window(image, t, batch_size)
            hidden = image.clone()
            y, x, h, w = box
            hidden[:, y : y + h, x : x + w] = self.fill
            single = self.drops(image, t, windows, batch_size)
            both = fixed_drop + self.drops(hidden, t, windows, batch_size)
            maps.append(self.paint(both, windows, size))
            singles.append(self.paint(single, windows, size))
            interactions.append(self.paint(single + fixed_drop - both, windows, size))
            boxes.append(box)
            fixed_drops.append(fixed_drop)
        extras = {
            "single": torch.stack(singles).cpu(),
            "interaction": torch.stack(interactions).cpu(),
            "fixed": torch.tensor(boxes),
            "fixed_drop": torch.tensor(fixed_drops),
        }
        return Attributed(torch.stack(maps), extras)


@register
class RISE(Attribution):
    """RISE: the score-weighted average of many random smooth masks.

    Each mask is a random ``cells x cells`` binary grid (a cell is kept with probability ``p1``),
    upsampled bilinearly to ``(cells + 1) * cell_size`` and cropped at a random shift, as in the
    paper. The map is ``sum_i f(x * M_i) M_i / (n_masks * p1)``, ``f`` the target's softmax
    probability (``score=``). The grids and shifts are drawn from a local generator seeded with
    ``seed`` (a few bytes per mask); the full-size masks are made ``batch_size`` at a time, so memory
    stays bounded at any ``n_masks``. Every image of a batch, and every batch size, sees the same
    masks. Hidden pixels are blended towards ``fill`` (0 is the dataset mean colour in
    normalised inputs).

    Shape:
        A ``(N, H, W)`` non-negative map.

    References:
        Petsiuk, Das, Saenko. RISE: Randomized Input Sampling for Explanation of Black-box Models.
        BMVC 2018.
    """

    name = "rise"
    quick_params: ClassVar[dict[str, Any]] = {"n_masks": 256}
    family = "perturbation"
    summary = "average of random smooth masks weighted by the score"
    reference = "Petsiuk et al. 2018"
    bf16_faithful = True

    def __init__(
        self,
        model: ModelLike,
        *,
        n_masks: int = 1000,
        cells: int = 7,
        p1: float = 0.5,
        fill: float = 0.0,
        score: str = "probability",
        seed: int = 0,
        batch_size: int | str | None = None,
        precision: str = "auto",
    ):
        super().__init__(model, batch_size=batch_size, precision=precision)
        if n_masks < 1 or cells < 1:
            raise ValueError(f"n_masks and cells must be positive, got n_masks={n_masks}, cells={cells}")
        if not 0.0 < p1 <= 1.0:
            raise ValueError(f"p1 (the keep probability) must be in (0, 1], got {p1}")
        self.n_masks = n_masks
        self.cells = cells
        self.p1 = p1
        self.fill = fill
        self.score = check_score(score)
        self.seed = seed

    def draws(self, size: tuple[int, int], generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        """The random part of every mask: ``(n_masks, cells, cells)`` grids and ``(n_masks, 2)`` shifts.

        Small (a few bytes per mask), drawn once so the masks do not depend on the batch size.
        """
        cell_h, cell_w = -(-size[0] // self.cells), -(-size[1] // self.cells)
        grids = torch.rand(self.n_masks, self.cells, self.cells, generator=generator) < self.p1
        shifts = torch.stack(
            [
                torch.randint(0, cell_h, (self.n_masks,), generator=generator),
                torch.randint(0, cell_w, (self.n_masks,), generator=generator),
            ],
            dim=1,
        )
        return grids, shifts

    def masks(self, grids: torch.Tensor, shifts: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
        """RISE masks of ``size`` from grids and shifts (:meth:`draws`): ``(n, 1, H, W)`` in ``[0, 1]``."""
        height, width = size
        cell_h, cell_w = -(-height // self.cells), -(-width // self.cells)
        up = F.interpolate(
            grids[:, None].float(),
            size=((self.cells + 1) * cell_h, (self.cells + 1) * cell_w),
            mode="bilinear",
            align_corners=False,
        )
        return torch.stack(
            [up[i, :, y : y + height, x : x + width] for i, (y, x) in enumerate(shifts.tolist())]
        )

    def _attribute(self, inputs: torch.Tensor, targets: torch.Tensor, batch_size: int) -> torch.Tensor:
        size = (inputs.shape[2], inputs.shape[3])
        grids, shifts = self.draws(size, torch.Generator().manual_seed(self.seed))
        maps = torch.zeros(len(inputs), *size, device=inputs.device)
        for g, s in zip(grids.split(batch_size), shifts.split(batch_size)):
            masks = self.masks(g, s, size).to(inputs.device)
            for i, (image, t) in enumerate(zip(inputs, targets.tolist())):
                batch = self.fill + (image - self.fill) * masks
                scores = self.scores_of(iter([batch]), t, self.score)
                maps[i] += torch.einsum("b,bhw->hw", scores, masks[:, 0])
        return maps / (self.n_masks * self.p1)


def _layer_activations(method: Attribution, inputs: torch.Tensor, batch_size: int) -> torch.Tensor:
    """The method's target layer output for ``inputs``, without autograd: ``(N, C, h, w)``.

    The output is copied when the layer returns it, so a later in-place operation cannot change it.
    """
    name, layer = method.target_layer(inputs)
    out: list[torch.Tensor] = []
    handles = Handles()

    def keep(_m: nn.Module, _i: object, a: object) -> None:
        if not isinstance(a, torch.Tensor):
            raise TypeError(f"layer {name!r} returns {type(a).__name__}, not a tensor; choose a conv layer")
        out.append(a.clone())

    try:
        handles.add(layer.register_forward_hook(keep))
        with torch.inference_mode():
            for chunk in inputs.split(batch_size):
                method.module(chunk)
    finally:
        handles.remove()
    if len(out) != len(inputs.split(batch_size)):
        raise RuntimeError(f"layer {name!r} did not run exactly once per forward pass")
    acts = torch.cat(out)
    if acts.ndim != 4:
        raise ValueError(
            f"layer {name!r} outputs shape {tuple(acts.shape)}; CAM methods need a (N, C, H, W) "
            "feature map, choose a convolutional layer"
        )
    return acts.float()


@register
class ScoreCAM(Attribution):
    """Score-CAM: feature maps weighted by how much each one, used as an input mask, raises the score.

    Each channel ``A_k`` of the layer is upsampled to the input size and min-max normalised to
    ``[0, 1]``; the input multiplied by it (``fill`` where the mask is 0) is scored, the scores
    ``S_k`` go through a softmax over channels, and the map is ``ReLU(sum_k softmax(S)_k A_k)``.
    Masks are made ``batch_size`` channels at a time.

    Shape:
        A ``(N, H, W)`` non-negative map at the layer's resolution, upsampled.

    References:
        Wang et al. Score-CAM: Score-Weighted Visual Explanations for Convolutional Neural
        Networks. CVPR Workshops 2020.
    """

    name = "scorecam"
    family = "cam"
    summary = "ReLU(sum_k softmax(score of x masked by A_k) A_k)"
    reference = "Wang et al. 2020"
    uses_layer = True
    bf16_faithful = True

    def __init__(
        self,
        model: ModelLike,
        *,
        layer: LayerSpec = None,
        fill: float = 0.0,
        score: str = "probability",
        batch_size: int | str | None = None,
        precision: str = "auto",
    ):
        super().__init__(model, layer=layer, batch_size=batch_size, precision=precision)
        self.fill = fill
        self.score = check_score(score)

    def _masks(self, acts: torch.Tensor, size: tuple[int, int], batch_size: int) -> Iterator[torch.Tensor]:
        for chunk in acts.split(batch_size):
            up = F.interpolate(chunk[:, None], size=size, mode="bilinear", align_corners=False)
            low = up.amin(dim=(2, 3), keepdim=True)
            high = up.amax(dim=(2, 3), keepdim=True)
            yield torch.where(high > low, (up - low) / (high - low).clamp(min=1e-12), torch.zeros_like(up))

    def _attribute(self, inputs: torch.Tensor, targets: torch.Tensor, batch_size: int) -> torch.Tensor:
        acts = _layer_activations(self, inputs, batch_size)
        size = (inputs.shape[2], inputs.shape[3])
        maps = []
        for image, a, t in zip(inputs, acts, targets.tolist()):
            batches = (self.fill + (image - self.fill) * m for m in self._masks(a, size, batch_size))
            weights = self.scores_of(batches, t, self.score).softmax(0)
            maps.append(torch.relu(torch.einsum("c,chw->hw", weights.to(a.device), a)))
        return torch.stack(maps)


@register
class AblationCAM(Attribution):
    """Ablation-CAM: feature maps weighted by the score drop when each one is set to zero.

    The network runs up to the layer once per image (:class:`~cnnlens.attribution.engine.LayerSplit`),
    then only the part after it for every ablated channel, ``batch_size`` channels per pass. With
    ``y`` the target logit and ``y_k`` the logit with channel ``k`` zeroed, the weight is
    ``w_k = (y - y_k) / y`` as in the paper (so a negative ``y`` flips the signs) and the map is
    ``ReLU(sum_k w_k A_k)``. ``extras["split"]`` tells whether the network could be split (otherwise
    the whole network ran for every batch, with the layer's output swapped by a hook).

    Shape:
        A ``(N, H, W)`` non-negative map at the layer's resolution, upsampled.

    References:
        Desai, Ramaswamy. Ablation-CAM: Visual Explanations for Deep Convolutional Network via
        Gradient-free Localization. WACV 2020.
    """

    name = "ablationcam"
    family = "cam"
    summary = "ReLU(sum_k (y - y without A_k) / y * A_k)"
    reference = "Desai & Ramaswamy 2020"
    uses_layer = True
    bf16_faithful = True

    def __init__(
        self,
        model: ModelLike,
        *,
        layer: LayerSpec = None,
        batch_size: int | str | None = None,
        precision: str = "auto",
    ):
        super().__init__(model, layer=layer, batch_size=batch_size, precision=precision)

    @staticmethod
    def _ablated(acts: torch.Tensor, batch_size: int) -> Iterator[torch.Tensor]:
        channels = acts.shape[1]
        for start in range(0, channels, batch_size):
            count = min(batch_size, channels - start)
            batch = acts.expand(count, *acts.shape[1:]).clone()
            batch[torch.arange(count), torch.arange(start, start + count)] = 0
            yield batch

    def _attribute(self, inputs: torch.Tensor, targets: torch.Tensor, batch_size: int) -> Attributed:
        name, layer = self.target_layer(inputs)
        with torch.inference_mode():
            split = LayerSplit(self.module, name, layer, check=inputs[:1])
        maps = []
        for image, t in zip(inputs, targets.tolist()):
            with torch.inference_mode():
                head = split.head(image[None])
            acts = head.activation
            if acts.ndim != 4:
                raise ValueError(
                    f"layer {name!r} outputs shape {tuple(acts.shape)}; choose a convolutional layer"
                )
            tail = lambda b, head=head: split.tail(b, head)  # noqa: E731
            base = self.scores_of(iter([acts.clone()]), t, "logit", forward=tail)
            ablated = self.scores_of(self._ablated(acts, batch_size), t, "logit", forward=tail)
            y = float(base[0])
            weights = (base - ablated) / (y if abs(y) > 1e-12 else 1e-12)
            maps.append(torch.relu(torch.einsum("c,chw->hw", weights.to(acts.device), acts[0].float())))
        return Attributed(torch.stack(maps), {"split": split.split})
