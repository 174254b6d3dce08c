"""Gradient methods: the derivative of the target score with respect to the input pixels.

Saliency and gradient x input take one gradient per image; SmoothGrad and Integrated Gradients take
gradients at many points derived from each image, streamed through :func:`point_gradients` so that
only one batch of points is in memory at a time.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from typing import Any, ClassVar

import numpy as np
import torch
from torchvision.transforms.v2 import functional as TF

from cnnlens.attribution.core.base import (
    Attributed,
    Attribution,
    ModelLike,
    OnePass,
    TargetPicker,
    chunk_targets,
)
from cnnlens.attribution.core.registry import register
from cnnlens.attribution.engine.runner import PassRunner
from cnnlens.errors import InputError
from cnnlens.models.loaded import LoadedModel
from cnnlens.validation import check_positive_int


def input_gradient(
    runner: PassRunner, inputs: torch.Tensor, targets: torch.Tensor | TargetPicker, batch_size: int
) -> torch.Tensor:
    """d(target score)/d(input) for each input, ``(N, C, H, W)`` float32, in chunks of ``batch_size``.

    Only the input gradient is computed (the caller has switched parameter gradients off). With a
    :class:`~cnnlens.attribution.core.base.TargetPicker`, each chunk's targets are chosen from the
    logits of the same forward pass. The passes run as ``runner`` says (precision, memory format).
    """

    def score(logits: torch.Tensor, _store: dict[str, torch.Tensor], start: int) -> torch.Tensor:
        return runner.target_scores(logits, chunk_targets(targets, logits, start))

    return torch.cat(
        [p.input_grad for p in runner.gradient_passes(inputs, score, batch_size) if p.input_grad is not None]
    )


def saliency_reduction(grads: torch.Tensor) -> torch.Tensor:
    """The per-pixel map of a gradient-like tensor: the largest absolute value over the channels.

    Shape:
        ``(N, C, H, W)`` in, ``(N, H, W)`` out.
    """
    return grads.abs().amax(dim=1)


class InputGradientMethod(OnePass):
    """A one-pass method on the input gradient of the target score (or a rule's version of it).

    Subclasses turn :meth:`gradients` into a map in :meth:`_attribute_picking`; the guided rules
    override :meth:`gradients` only.
    """

    family = "gradient"
    needs_gradients = True

    def __init__(
        self,
        model: ModelLike,
        *,
        batch_size: int | None = None,
        **settings: str,
    ):
        super().__init__(model, batch_size=batch_size, **settings)

    def gradients(self, inputs: torch.Tensor, picker: TargetPicker, batch_size: int) -> torch.Tensor:
        """``(N, C, H, W)`` gradients of each input's target score, as the pass runner runs them."""
        return input_gradient(self.passes, inputs, picker, batch_size)


@register
class Saliency(InputGradientMethod):
    """Vanilla gradient saliency: the largest absolute gradient over the colour channels.

    Shape:
        A ``(N, H, W)`` non-negative map at the input resolution.

    References:
        Simonyan, Vedaldi, Zisserman. Deep Inside Convolutional Networks: Visualising Image
        Classification Models and Saliency Maps. ICLR workshop 2014.
    """

    name = "saliency"
    summary = "max over channels of |d score / d pixel|"
    reference = "Simonyan et al. 2014"

    def _attribute_picking(self, inputs: torch.Tensor, picker: TargetPicker, batch_size: int) -> torch.Tensor:
        return saliency_reduction(self.gradients(inputs, picker, batch_size))


Point = tuple[int, float, torch.Tensor]


def point_gradients(
    runner: PassRunner, points: Iterator[Point], targets: torch.Tensor, batch_size: int
) -> Iterator[Point]:
    """Gradients at a stream of points, evaluated ``batch_size`` points per forward/backward pass.

    Args:
        runner: The pass runner (parameter gradients already off).
        points: ``(input index, weight, point)`` triples; ``point`` is ``(C, H, W)``.
        targets: One class per input, indexed by the triples' input index.
        batch_size: Most points per pass; only one batch of points is held in memory at a time.

    Returns:
        An iterator of ``(input index, weight, gradient at the point)``, in the order of ``points``.
    """
    buffer: list[Point] = []

    def flush() -> Iterator[Point]:
        index = torch.tensor([i for i, _, _ in buffer], device=targets.device)
        stacked = torch.stack([p for _, _, p in buffer])
        grads = input_gradient(runner, stacked, targets[index], len(buffer))
        yield from ((i, w, g) for (i, w, _), g in zip(buffer, grads))
        buffer.clear()

    for point in points:
        buffer.append(point)
        if len(buffer) == batch_size:
            yield from flush()
    if buffer:
        yield from flush()


def seeded(seed: int, device: torch.device) -> torch.Generator:
    """A private random generator (the global RNG state is never touched)."""
    return torch.Generator(device=device).manual_seed(seed)


def pixel_bounds(model: ModelLike, inputs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Black and white in the model's input space, ``(1, C, 1, 1)`` each.

    A :class:`LoadedModel` normalises pixels in [0, 1] with its preprocessing; a bare ``nn.Module``
    is taken to read pixel values in [0, 1] directly.
    """
    c = inputs.shape[1]
    if isinstance(model, LoadedModel):
        mean = torch.tensor(model.preprocessing.mean, dtype=inputs.dtype, device=inputs.device)
        std = torch.tensor(model.preprocessing.std, dtype=inputs.dtype, device=inputs.device)
        return (-mean / std).view(1, c, 1, 1), ((1 - mean) / std).view(1, c, 1, 1)
    zeros = torch.zeros(1, c, 1, 1, dtype=inputs.dtype, device=inputs.device)
    return zeros, zeros + 1


@register
class GradientXInput(InputGradientMethod):
    """Gradient times input, summed over the colour channels (signed).

    Shape:
        A ``(N, H, W)`` signed map at the input resolution.

    References:
        Shrikumar, Greenside, Shcherbina, Kundaje. Not Just a Black Box: Learning Important Features
        Through Propagating Activation Differences. arXiv:1605.01713, 2016.
    """

    name = "gradxinput"
    summary = "sum over channels of x * d score / d x"
    reference = "Shrikumar et al. 2016"
    signed = True

    def _attribute_picking(self, inputs: torch.Tensor, picker: TargetPicker, batch_size: int) -> torch.Tensor:
        return (self.gradients(inputs, picker, batch_size) * inputs).sum(dim=1)


SMOOTHGRAD_VARIANTS = ("smoothgrad", "squared", "vargrad")


@register
class SmoothGrad(Attribution):
    """SmoothGrad and its variants: statistics of the gradient over noisy copies of the input.

    Gaussian noise with standard deviation ``noise * (x.max() - x.min())`` (each image's own range)
    is added ``n_samples`` times; the gradients are streamed ``batch_size`` at a time and reduced to
    their mean (``"smoothgrad"``), mean square (``"squared"``, SmoothGrad-Squared) or variance
    (``"vargrad"``), then to a per-pixel map like :class:`Saliency` (max of the absolute value over
    the channels). With ``noise=0`` SmoothGrad equals Saliency.

    The three variants are one method with a ``variant`` hyper-parameter rather than three registry
    names: they draw the same noisy gradients and differ only in the statistic kept, so they share
    every other parameter and all of the code.

    Args:
        noise: Noise level as a fraction of the image's value range (the paper suggests 0.1-0.2).
        n_samples: Noisy copies per image.
        seed: Seed of the private generator; each image gets the same noise draws, whatever the batch.
        variant: ``"smoothgrad"``, ``"squared"`` or ``"vargrad"``.

    Shape:
        A ``(N, H, W)`` non-negative map at the input resolution.

    References:
        Smilkov, Thorat, Kim, Viegas, Wattenberg. SmoothGrad: removing noise by adding noise.
        arXiv:1706.03825, 2017. Hooker, Erhan, Kindermans, Kim. A Benchmark for Interpretability
        Methods in Deep Neural Networks. NeurIPS 2019 (SmoothGrad-Squared). Adebayo et al. Local
        Explanation Methods for Deep Neural Networks Lack Sensitivity to Parameter Values. ICLR
        workshop 2018 (VarGrad).
    """

    name = "smoothgrad"
    quick_params: ClassVar[dict[str, Any]] = {"n_samples": 16}
    family = "gradient"
    summary = "gradient statistics over noisy copies (variant: smoothgrad, squared, vargrad)"
    reference = "Smilkov et al. 2017"
    needs_gradients = True

    def __init__(
        self,
        model: ModelLike,
        *,
        noise: float = 0.15,
        n_samples: int = 50,
        seed: int = 0,
        variant: str = "smoothgrad",
        batch_size: int | None = None,
        **settings: str,
    ):
        super().__init__(model, batch_size=batch_size, **settings)
        if not 0 <= noise < float("inf"):
            raise InputError(f"noise must be a fraction of the input range >= 0 (e.g. 0.15), got {noise}")
        check_positive_int("n_samples", n_samples)
        if variant not in SMOOTHGRAD_VARIANTS:
            raise InputError(f"variant must be one of {', '.join(SMOOTHGRAD_VARIANTS)}, got {variant!r}")
        self.noise = noise
        self.n_samples = n_samples
        self.seed = seed
        self.variant = variant

    def _points(self, inputs: torch.Tensor) -> Iterator[Point]:
        for i, x in enumerate(inputs):
            sigma = self.noise * float(x.max() - x.min())
            generator = seeded(self.seed, x.device)
            for _ in range(self.n_samples):
                noise = torch.randn(x.shape, generator=generator, device=x.device, dtype=x.dtype)
                yield i, 1.0, x + sigma * noise

    def _attribute(self, inputs: torch.Tensor, targets: torch.Tensor, batch_size: int) -> torch.Tensor:
        total = torch.zeros(inputs.shape, dtype=torch.float64, device=inputs.device)
        squares = torch.zeros_like(total)
        points = self._points(inputs)
        for i, _, g in point_gradients(self.passes, points, targets, batch_size):
            total[i] += g
            squares[i] += g.double() ** 2
        mean, mean_square = total / self.n_samples, squares / self.n_samples
        stat = {"smoothgrad": mean, "squared": mean_square, "vargrad": mean_square - mean**2}[self.variant]
        return saliency_reduction(stat.clamp(min=0) if self.variant == "vargrad" else stat).float()


BASELINES = ("black", "blur", "noise", "zero")
IG_RULES = ("gauss_legendre", "trapezoid", "left", "right", "middle")


#: Bounds on ``steps``: beyond them a path integral needs more memory (Gauss-Legendre's nodes come
#: from a steps x steps matrix) or time than any image is worth, and its error is already negligible.
MAX_GAUSS_LEGENDRE_STEPS = 1_000
MAX_PATH_STEPS = 100_000


def path_nodes(rule: str, steps: int) -> tuple[list[float], list[float]]:
    """Points ``alpha`` in [0, 1] and weights of a quadrature of ``int_0^1 g(alpha) d alpha``."""
    limit = MAX_GAUSS_LEGENDRE_STEPS if rule == "gauss_legendre" else MAX_PATH_STEPS
    if steps > limit:  # each step is a backward pass; Gauss-Legendre also builds a steps² matrix
        raise InputError(f"steps={steps} is more than the {rule} rule takes (at most {limit:,}); lower steps")
    if rule == "gauss_legendre":
        nodes, gl_weights = np.polynomial.legendre.leggauss(steps)
        return [(float(a) + 1) / 2 for a in nodes], [float(w) / 2 for w in gl_weights]
    if rule == "trapezoid":
        if steps < 2:
            raise InputError(f"the trapezoid rule needs steps >= 2, got {steps}")
        alphas = [k / (steps - 1) for k in range(steps)]
        weights = [1 / (steps - 1)] * steps
        weights[0] = weights[-1] = 0.5 / (steps - 1)
        return alphas, weights
    offset = {"left": 0.0, "right": 1.0, "middle": 0.5}[rule]
    return [(k + offset) / steps for k in range(steps)], [1 / steps] * steps


def given_baseline(baseline: torch.Tensor, inputs: torch.Tensor) -> torch.Tensor:
    """A user's baseline tensor checked against the inputs and broadcast to ``(N, C, H, W)``."""
    b = baseline.detach().to(device=inputs.device, dtype=inputs.dtype)
    b = b.unsqueeze(0) if b.ndim == 3 else b
    if b.ndim != 4 or b.shape[1:] != inputs.shape[1:] or b.shape[0] not in (1, len(inputs)):
        raise InputError(
            f"the baseline tensor has shape {tuple(baseline.shape)}, but the inputs are "
            f"{tuple(inputs.shape)}; give (C, H, W), (1, C, H, W) or (N, C, H, W) with the same C, H, W"
        )
    return b.expand_as(inputs)


def check_baseline(baseline: str | torch.Tensor) -> None:
    """Validate a ``baseline=`` argument: one of :data:`BASELINES` or a finite float tensor."""
    if isinstance(baseline, torch.Tensor):
        if not baseline.is_floating_point() or not torch.isfinite(baseline).all():
            raise InputError("a baseline tensor must be a finite float tensor in the model's input space")
    elif baseline not in BASELINES:
        raise InputError(f"baseline must be one of {', '.join(BASELINES)} or a tensor, got {baseline!r}")


def make_baselines(
    model: ModelLike, baseline: str | torch.Tensor, inputs: torch.Tensor, blur_sigma: float, seed: int
) -> torch.Tensor:
    """The baseline of each input, ``(N, C, H, W)`` (see :class:`IntegratedGradients`)."""
    if isinstance(baseline, torch.Tensor):
        return given_baseline(baseline, inputs)
    lo, hi = pixel_bounds(model, inputs)
    if baseline == "black":
        return lo.expand_as(inputs).clone()
    if baseline == "zero":
        return torch.zeros_like(inputs)
    if baseline == "blur":
        size = min(2 * math.ceil(3 * blur_sigma) + 1, 2 * (min(inputs.shape[-2:]) // 2) - 1)
        return TF.gaussian_blur(inputs, [max(size, 1)] * 2, [blur_sigma] * 2)
    draws = [
        torch.rand(x.shape, generator=seeded(seed, x.device), device=x.device, dtype=x.dtype) for x in inputs
    ]
    return lo + (hi - lo) * torch.stack(draws)


@register
class IntegratedGradients(Attribution):
    """Integrated Gradients: ``(x - x') * int_0^1 grad f(x' + a (x - x')) da``, summed over channels.

    The path integral is a quadrature over ``steps`` points whose gradients are evaluated
    ``batch_size`` at a time. Completeness says the attributions sum to ``f(x) - f(x')``; the gap
    ``|sum(attr) - (f(x) - f(x'))|`` of the target logit is returned per input in
    ``extras["completeness_gap"]`` (it shrinks as ``steps`` grows).

    Args:
        baseline: ``"black"`` (pixel value 0 under the model's preprocessing), ``"blur"`` (the image
            under a Gaussian blur of ``blur_sigma`` pixels), ``"noise"`` (uniform noise over the pixel
            range, drawn with ``seed``), ``"zero"`` (the zero tensor) or a tensor ``(C, H, W)``,
            ``(1, C, H, W)`` or ``(N, C, H, W)`` in the model's input space.
        steps: Number of points on the path.
        rule: ``"gauss_legendre"``, ``"trapezoid"``, or a Riemann sum ``"left"``, ``"right"``,
            ``"middle"``.
        blur_sigma: Standard deviation in pixels of the ``"blur"`` baseline.
        seed: Seed of the ``"noise"`` baseline's private generator.

    Shape:
        A ``(N, H, W)`` signed map at the input resolution; it sums to ``f(x) - f(x')`` up to the gap.

    References:
        Sundararajan, Taly, Yan. Axiomatic Attribution for Deep Networks. ICML 2017. Sturmfels,
        Lundberg, Lee. Visualizing the Impact of Feature Attribution Baselines. Distill 2020.
    """

    name = "integrated_gradients"
    quick_params: ClassVar[dict[str, Any]] = {"steps": 16}
    family = "gradient"
    summary = "(x - baseline) times the gradient averaged along the straight path"
    reference = "Sundararajan et al. 2017"
    needs_gradients = True
    signed = True

    def __init__(
        self,
        model: ModelLike,
        *,
        baseline: str | torch.Tensor = "black",
        steps: int = 50,
        rule: str = "gauss_legendre",
        blur_sigma: float = 10.0,
        seed: int = 0,
        batch_size: int | None = None,
        **settings: str,
    ):
        super().__init__(model, batch_size=batch_size, **settings)
        check_baseline(baseline)
        check_positive_int("steps", steps)
        if rule not in IG_RULES:
            raise InputError(f"rule must be one of {', '.join(IG_RULES)}, got {rule!r}")
        if not blur_sigma > 0:
            raise InputError(f"blur_sigma must be a positive number of pixels, got {blur_sigma}")
        path_nodes(rule, steps)  # validates steps for the rule
        self.baseline = baseline
        self.steps = steps
        self.rule = rule
        self.blur_sigma = blur_sigma
        self.seed = seed

    def baselines(self, inputs: torch.Tensor) -> torch.Tensor:
        """The baseline of each input, ``(N, C, H, W)``."""
        return make_baselines(self.model, self.baseline, inputs, self.blur_sigma, self.seed)

    def _points(self, inputs: torch.Tensor, baselines: torch.Tensor) -> Iterator[Point]:
        alphas, weights = path_nodes(self.rule, self.steps)
        for i, (x, b) in enumerate(zip(inputs, baselines)):
            for a, w in zip(alphas, weights):
                yield i, w, b + a * (x - b)

    def _attribute(self, inputs: torch.Tensor, targets: torch.Tensor, batch_size: int) -> Attributed:
        baselines = self.baselines(inputs)
        integral = torch.zeros(inputs.shape, dtype=torch.float64, device=inputs.device)
        points = self._points(inputs, baselines)
        for i, w, g in point_gradients(self.passes, points, targets, batch_size):
            integral[i] += w * g.double()
        attr = ((inputs - baselines).double() * integral).sum(dim=1)
        ends = self.passes.target_scores(
            self.forward(torch.cat([inputs, baselines]), batch_size), targets.repeat(2)
        )
        difference = (ends[: len(inputs)] - ends[len(inputs) :]).double()
        gap = (attr.sum(dim=(1, 2)) - difference).abs()
        return Attributed(attr.float(), {"completeness_gap": gap.float().cpu()})
