"""Perturbation methods: change parts of the input and watch the target score."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Any, ClassVar

import torch
import torch.nn.functional as F

from cnnlens.attribution.core.base import Attributed, Attribution, ModelLike
from cnnlens.attribution.core.registry import register
from cnnlens.errors import InputError, InputTypeError
from cnnlens.validation import check_int, check_real, check_score, describe, is_int

#: A window as ``(top, left, height, width)`` in pixels.
Box = tuple[int, int, int, int]

FIXED_MODES = ("center", "sweep")


def _sizes(name: str, value: object) -> int | tuple[int, ...]:
    """An integer, or a non-empty list / tuple of integers (returned as a tuple)."""
    if isinstance(value, (list, tuple)):
        if not value:
            raise InputError(f"{name} must list at least one size, got {value!r}")
        return tuple(check_int(f"{name}[{i}]", v) for i, v in enumerate(value))
    if not is_int(value):
        raise InputTypeError(
            f"{name} must be an integer or a list of integers (pixels), got {describe(value)}"
        )
    return int(value)


def _as_tuple(sizes: int | tuple[int, ...] | None) -> tuple[int, ...]:
    if sizes is None:
        return ()
    return sizes if isinstance(sizes, tuple) else (sizes,)


def _check_fixed(fixed: object) -> tuple[int, int] | str | None:
    """Validate ``fixed=`` of :class:`DoubleOcclusion` (a list ``[top, left]`` becomes a tuple)."""
    expected = "fixed must be None, 'center', 'sweep' or (top, left) with non-negative pixels"
    if fixed is None or (isinstance(fixed, str) and fixed in FIXED_MODES):
        return fixed
    if not isinstance(fixed, (list, tuple)) or len(fixed) != 2:
        raise InputError(f"{expected}, got {fixed!r}")
    top, left = check_int("fixed[0] (top)", fixed[0]), check_int("fixed[1] (left)", fixed[1])
    if min(top, left) < 0:
        raise InputError(f"{expected}, got {fixed!r}")
    return top, left


def same_inputs(inputs: torch.Tensor) -> list[list[int]]:
    """The indices of ``inputs`` grouped by equal images, in order of first appearance.

    A perturbation method runs each group's perturbed images once and reads every member's target
    from the same pass (the benchmark's grid pointing game explains each grid for four classes).
    """
    groups: list[list[int]] = []
    for i, image in enumerate(inputs):
        group = next((g for g in groups if torch.equal(inputs[g[0]], image)), None)
        if group is None:
            groups.append([i])
        else:
            group.append(i)
    return groups


def window_starts(size: int, window: int, stride: int) -> list[int]:
    """Start positions of a sliding window along one axis; the last window always reaches the end."""
    starts = list(range(0, max(size - window, 0) + 1, stride))
    if starts[-1] + window < size:
        starts.append(size - window)
    return starts


@register
class Occlusion(Attribution):
    """Occlusion: slide a square of constant value over the image and record the score drop.

    Each pixel gets the mean drop of the target score over the windows that cover it. Seed 002
    slides windows of several sizes and compares them: give ``window`` as a list, and the map is
    the mean of the per-size maps (each size weighs the same, however many windows it has), with
    every per-size map in ``extras``. The windows of all sizes and the intact image are evaluated
    in one stream, ``batch_size`` perturbed images at a time.

    The default, windows of 48 and 96 pixels each sliding by half its side, was chosen on the grid
    pointing game with EfficientNet-Lite0 (docs/methods.md, issue 21): one window of 48 (the old
    ``--quick``) follows the model's response to small patches and can point away from the object,
    and one of 32 is more than twice as costly and localises worse.

    Args:
        model: The network.
        window: Side of the square in pixels, or a list of sides (several sizes).
        stride: Step of the window in pixels: one step for every size, a list with one step per
            size, or ``None`` for half of each window (at least 1).
        fill: The value hidden pixels take (0 is the dataset mean colour in normalised inputs).
        score: ``"logit"`` or ``"probability"`` of the target.
        batch_size: Perturbed images per forward pass (``"auto"``: from free memory).
        precision: ``"fp32"``, ``"bf16"`` or ``"auto"``.

    Shape:
        A ``(N, H, W)`` signed map: positive where hiding the pixels lowers the score. With a list of
        sizes, ``extras["per_size"]`` is ``(N, S, H, W)`` (one map per size, in the order given) and
        ``extras["scales"]`` ``(N, S, 2)`` the ``(window, stride)`` pairs used.

    References:
        Zeiler, Fergus. Visualizing and Understanding Convolutional Networks. ECCV 2014. Fang.
        Convolutional Neural Network Interpretability Analysis for Image Classification (sliders of
        several sizes and steps).
    """

    name = "occlusion"
    quick_params: ClassVar[dict[str, Any]] = {}  # the default (48, 96) is already the cheaper one
    pixel_params: ClassVar[tuple[str, ...]] = ("window",)
    family = "perturbation"
    summary = "score drop when a sliding window is hidden"
    reference = "Zeiler & Fergus 2014"
    signed = True
    bf16_faithful = True  # measured: docs/decisions.md, "Precision"

    def __init__(
        self,
        model: ModelLike,
        *,
        window: int | Sequence[int] = (48, 96),
        stride: int | Sequence[int] | None = None,
        fill: float = 0.0,
        score: str = "logit",
        batch_size: int | str | None = None,
        **settings: str,
    ):
        super().__init__(model, batch_size=batch_size, **settings)
        windows = _sizes("window", window)
        strides = None if stride is None else _sizes("stride", stride)
        flat = [*_as_tuple(windows), *_as_tuple(strides)]
        if min(flat) < 1:
            raise InputError(f"window and stride must be positive, got window={window}, stride={stride}")
        if isinstance(strides, tuple) and (not isinstance(windows, tuple) or len(strides) != len(windows)):
            raise InputError(
                f"a list of strides needs a list of windows of the same length (one step per size), "
                f"got window={window}, stride={stride}; or give one stride, or stride=None for half "
                "of each window"
            )
        self.window = windows
        self.stride = strides
        self.fill = check_real("fill", fill)
        self.score = check_score(score)

    def scales(self, size: tuple[int, int] | None = None) -> list[tuple[int, int]]:
        """The ``(window, stride)`` pairs this method slides, one per window size.

        Given the image ``size``, a list of several sizes leaves out those larger than the image
        (such a window would hide the whole image: a constant map that only flattens the mean); when
        none fits (the default (48, 96) on a 32-pixel input), one window of a quarter of the image's
        side slides by an eighth. One size given alone is always kept (clipped to the image; the
        command line refuses a window larger than the input up front).
        """
        windows = _as_tuple(self.window)
        if self.stride is None:
            strides = tuple(max(1, w // 2) for w in windows)
        elif isinstance(self.stride, tuple):
            strides = self.stride
        else:
            strides = (self.stride,) * len(windows)
        pairs = list(zip(windows, strides))
        if size is not None and len(pairs) > 1:
            side = min(size)
            fitting = [p for p in pairs if p[0] <= side]
            pairs = fitting or [(max(2, side // 4), max(1, side // 8))]
        return pairs

    def windows(
        self, height: int, width: int, window: int | None = None, stride: int | None = None
    ) -> list[Box]:
        """Every window as ``(top, left, height, width)``.

        Args:
            height: Image height.
            width: Image width.
            window: The square's side (default: ``self.window``, which must then be one size).
            stride: The step (default: ``self.stride`` when it is one step, else half the window).
        """
        if window is None:
            if not isinstance(self.window, int):
                raise InputError(f"window= is needed: this method slides several sizes {self.window}")
            window = self.window
        if stride is None:
            stride = self.stride if isinstance(self.stride, int) else max(1, window // 2)
        wh, ww = min(window, height), min(window, width)
        return [
            (y, x, wh, ww)
            for y in window_starts(height, wh, stride)
            for x in window_starts(width, ww, stride)
        ]

    def _batches(
        self, image: torch.Tensor, hidden: Sequence[Sequence[Box]], batch_size: int
    ) -> Iterator[torch.Tensor]:
        """``image`` with every box of each entry of ``hidden`` filled, ``batch_size`` at a time."""
        for i in range(0, len(hidden), batch_size):
            chunk = hidden[i : i + batch_size]
            batch = image.expand(len(chunk), *image.shape).clone()
            for j, boxes in enumerate(chunk):
                for y, x, h, w in boxes:
                    batch[j, :, y : y + h, x : x + w] = self.fill
            yield batch

    def drops(
        self, image: torch.Tensor, target: int, windows: Sequence[Box], batch_size: int
    ) -> torch.Tensor:
        """Target score of ``image`` minus its score with each window hidden: ``(len(windows),)``.

        The intact image rides along in the first batch (no separate forward pass for it).
        """
        scores = self.passes.scores(
            self._batches(image, [(), *((b,) for b in windows)], batch_size), target, self.score
        )
        return scores[0] - scores[1:]

    @staticmethod
    def paint(values: torch.Tensor, windows: Sequence[Box], size: tuple[int, int]) -> torch.Tensor:
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
        scales = self.scales(size)
        per_scale = [self.windows(*size, w, s) for w, s in scales]
        every = [box for boxes in per_scale for box in boxes]
        maps = []
        for image, t in zip(inputs, targets.tolist()):
            drops = self.drops(image, t, every, batch_size).split([len(b) for b in per_scale])
            maps.append(torch.stack([self.paint(d, b, size) for d, b in zip(drops, per_scale)]))
        per_size = torch.stack(maps)  # (N, S, H, W)
        if not isinstance(self.window, tuple):
            return per_size[:, 0]
        pairs = torch.tensor(scales).expand(len(inputs), -1, -1).clone()  # per input, like every extra
        return Attributed(per_size.mean(1), {"per_size": per_size.cpu(), "scales": pairs})


@register
class DoubleOcclusion(Occlusion):
    """Double occlusion (Fang): one window held fixed while a second, smaller one slides.

    Fang's analysis uses two sliders at once: it fixes one, slides the other over the picture, then moves
    the fixed one a step and slides the other again. ``fixed`` chooses where the fixed window
    (size ``fixed_window``) goes:

    - ``None`` (default): where single occlusion with that window size lowers the score the most;
    - ``"center"``: the centre of the image;
    - ``(top, left)``: those pixels;
    - ``"sweep"``: every position of the fixed window, stepping by ``stride`` (Fang's
      procedure). It costs ``1 + n + p + p * n`` evaluations for ``n`` sliding and ``p`` fixed
      positions (one fixed position costs ``1 + 2 n + 1``).

    At each fixed position ``a`` the sliding window ``b`` (size ``window``, step ``stride``) visits
    every position with ``a`` hidden as well. Everything is evaluated in one stream of
    ``batch_size`` images.

    Args:
        model: The network.
        window: Side of the sliding window in pixels (one size; :class:`Occlusion` takes several).
        stride: Step of both windows in pixels (``None``: half of each window).
        fixed_window: Side of the fixed window in pixels.
        fixed: ``None``, ``"center"``, ``"sweep"`` or ``(top, left)``, as above.
        fill: The value hidden pixels take.
        score: ``"logit"`` or ``"probability"`` of the target.
        batch_size: Perturbed images per forward pass.
        precision: ``"fp32"``, ``"bf16"`` or ``"auto"``.

    Shape:
        A ``(N, H, W)`` signed map: each pixel's mean score drop ``f(x) - f(x without a and b)`` over
        the sliding windows ``b`` covering it (and, with ``"sweep"``, over the fixed positions
        ``a``). ``extras`` holds ``"single"`` (the ordinary occlusion map of the sliding window,
        ``f(x) - f(x without b)``), ``"interaction"`` (``f(x) - f(x without a) - f(x without b) +
        f(x without a and b)``: zero where the evidence under ``b`` adds to that under ``a``,
        negative where the two are redundant (either one suffices), positive where they are
        needed together; with ``"sweep"`` its mean over ``a``), ``"fixed"`` (windows as top,
        left, height, width: ``(N, 4)``, or ``(N, p, 4)`` with ``"sweep"``) and ``"fixed_drop"``
        (``f(x) - f(x without a)``: ``(N,)``, or ``(N, p)``). With ``"sweep"``, ``"per_fixed"``
        ``(N, p, H, W)`` holds the map of every fixed position (its interaction map is
        ``single + fixed_drop[p] - per_fixed[p]`` wherever a sliding window reaches, i.e. everywhere
        unless ``stride`` exceeds ``window``).

    References:
        Fang. Convolutional Neural Network Interpretability Analysis for Image Classification (the
        two-slider occlusion experiment). Zeiler, Fergus. Visualizing and Understanding
        Convolutional Networks. ECCV 2014.
    """

    name = "double_occlusion"
    quick_params: ClassVar[dict[str, Any]] = {"window": 32, "stride": 32}
    pixel_params: ClassVar[tuple[str, ...]] = ("window", "fixed_window")
    summary = "score drop with a fixed window and a second sliding window hidden"
    reference = "Zeiler & Fergus 2014; Fang"
    bf16_faithful = False

    def __init__(
        self,
        model: ModelLike,
        *,
        window: int = 16,
        stride: int | None = 16,
        fixed_window: int = 48,
        fixed: tuple[int, int] | str | None = None,
        fill: float = 0.0,
        score: str = "logit",
        batch_size: int | str | None = None,
        **settings: str,
    ):
        for key, value in (("window", window), ("stride", stride)):
            if isinstance(value, (list, tuple)):
                raise InputTypeError(
                    f"double_occlusion slides one window size, got {key}={value!r}; "
                    "use occlusion for several sizes"
                )
        super().__init__(
            model,
            window=window,
            stride=stride,
            fill=fill,
            score=score,
            batch_size=batch_size,
            **settings,
        )
        if check_int("fixed_window", fixed_window) < 1:
            raise InputError(f"fixed_window must be positive, got {fixed_window}")
        self.fixed_window = int(fixed_window)
        self.fixed = _check_fixed(fixed)

    def fixed_boxes(self, image: torch.Tensor, target: int, batch_size: int) -> list[Box]:
        """Where the fixed window goes for ``image`` (one box, or every position with ``"sweep"``)."""
        height, width = image.shape[-2:]
        fh, fw = min(self.fixed_window, height), min(self.fixed_window, width)
        if self.fixed == "sweep":
            return self.windows(height, width, self.fixed_window)
        if self.fixed == "center":
            return [((height - fh) // 2, (width - fw) // 2, fh, fw)]
        if isinstance(self.fixed, tuple):
            top, left = min(self.fixed[0], height - 1), min(self.fixed[1], width - 1)
            return [(top, left, min(self.fixed_window, height - top), min(self.fixed_window, width - left))]
        candidates = self.windows(height, width, self.fixed_window)
        return [candidates[int(self.drops(image, target, candidates, batch_size).argmax())]]

    def _attribute(self, inputs: torch.Tensor, targets: torch.Tensor, batch_size: int) -> Attributed:
        size = (inputs.shape[2], inputs.shape[3])
        windows = self.windows(*size)
        n = len(windows)
        maps, singles, interactions, per_fixed, boxes, fixed_drops = [], [], [], [], [], []
        for image, t in zip(inputs, targets.tolist()):
            fixed = self.fixed_boxes(image, t, batch_size)
            hidden = [(), *((b,) for b in windows), *((a,) for a in fixed)]
            hidden += [(a, b) for a in fixed for b in windows]
            scores = self.passes.scores(self._batches(image, hidden, batch_size), t, self.score)
            drop = scores[0] - scores[1:]
            single, fixed_drop = drop[:n], drop[n : n + len(fixed)]
            pairs = drop[n + len(fixed) :].view(len(fixed), n)  # (fixed position, sliding window)
            both = torch.stack([self.paint(row, windows, size) for row in pairs])
            interaction = torch.stack(
                [self.paint(single + fd - row, windows, size) for fd, row in zip(fixed_drop, pairs)]
            )
            maps.append(both.mean(0))
            singles.append(self.paint(single, windows, size))
            interactions.append(interaction.mean(0))
            per_fixed.append(both)
            boxes.append(fixed)
            fixed_drops.append(fixed_drop.cpu())
        sweep = self.fixed == "sweep"
        extras = {
            "single": torch.stack(singles).cpu(),
            "interaction": torch.stack(interactions).cpu(),
            "fixed": torch.tensor(boxes) if sweep else torch.tensor([b[0] for b in boxes]),
            "fixed_drop": torch.stack(fixed_drops) if sweep else torch.cat(fixed_drops),
        }
        if sweep:
            extras["per_fixed"] = torch.stack(per_fixed).cpu()
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

    Args:
        model: The network.
        n_masks: Number of random masks (the paper's ``N``).
        cells: Grid cells per side of the low-resolution mask (the paper's ``h = w``, 7 for
            ImageNet). This sets the cell size: ``cell_size = ceil(H / cells)`` pixels (and
            ``ceil(W / cells)`` across), so more cells means smaller cells and a finer map.
        p1: Probability that a cell is kept (shown).
        fill: The value hidden pixels are blended towards.
        score: ``"probability"`` (the paper) or ``"logit"`` of the target.
        seed: Seed of the masks.
        batch_size: Masks per forward pass.
        precision: ``"fp32"``, ``"bf16"`` or ``"auto"``.

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
    bf16_faithful = True  # measured: docs/decisions.md, "Precision"

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
        **settings: str,
    ):
        super().__init__(model, batch_size=batch_size, **settings)
        if check_int("n_masks", n_masks) < 1 or check_int("cells (grid cells per side)", cells) < 1:
            raise InputError(f"n_masks and cells must be positive, got n_masks={n_masks}, cells={cells}")
        if not 0.0 < check_real("p1", p1) <= 1.0:
            raise InputError(f"p1 (the keep probability) must be in (0, 1], got {p1}")
        self.n_masks = int(n_masks)
        self.cells = int(cells)
        self.p1 = float(p1)
        self.fill = check_real("fill", fill)
        self.score = check_score(score)
        self.seed = check_int("seed", seed)

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
        groups = same_inputs(inputs)  # an image explained for several classes is masked and run once
        for g, s in zip(grids.split(batch_size), shifts.split(batch_size)):
            masks = self.masks(g, s, size).to(inputs.device)
            for members in groups:
                batch = self.fill + (inputs[members[0]] - self.fill) * masks
                scores = self.passes.scores_of_targets(batch, [int(targets[i]) for i in members], self.score)
                maps[members] += torch.einsum("tb,bhw->thw", scores, masks[:, 0])
        return maps / (self.n_masks * self.p1)
