"""Layer attribution: how much each feature map of a layer contributes to the target score.

Every method here computes *channel attributions* ``(N, C, h, w)`` at one or many layers from a single
batched forward and backward pass: the outputs of all requested layers are recorded in one forward
pass (:func:`~cnnlens.models.hooks.capture_outputs`) and ``torch.autograd.grad(score,
[all layer outputs])`` is called once. A layer's map is the sum over its channels, as in the seed
study (Shapley values of feature layers, "visualise a block by summing all its maps").

:func:`cnnlens.probing.atlas.layer_atlas` runs one method at every selected layer of a network
for one image: the layer atlas. The single-layer versions are registered methods
(``layer_gradxact``, ``layer_ig``, ``layer_gradshap``) that follow the common
:class:`~cnnlens.attribution.core.base.Attribution` contract.
"""

from __future__ import annotations

import re
from abc import abstractmethod
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

import torch
from torch import nn

from cnnlens.attribution.core.base import Attribution, LayerSpec, ModelLike
from cnnlens.attribution.core.registry import register
from cnnlens.attribution.engine.runner import PassRunner
from cnnlens.errors import InputError, InputTypeError
from cnnlens.models.layers import resolve_layer
from cnnlens.validation import check_positive_int

LayerSelection = str | Sequence[str | nn.Module] | None

#: Names of stage containers in common CNN families: torchvision/timm ResNets (``layer1``),
#: timm EfficientNets (``blocks.3``), ConvNeXt/RegNet (``stages.2``), torchvision MobileNets and
#: EfficientNets (``features.4``, only when it is a block container, not a single conv as in VGG).
_STAGE_NAME = re.compile(r"^(layer\d+|(blocks|stages|layers|features)\.\d+)$")


# ---------------------------------------------------------------------------------------------
# Which layers


def conv_layers(module: nn.Module) -> list[str]:
    """Dotted names of every 2-D convolution of ``module``, in definition order."""
    return [n for n, m in module.named_modules() if n and isinstance(m, nn.Conv2d)]


def stage_layers(module: nn.Module) -> list[str]:
    """The network's stages (residual/inverted-residual block groups) plus the convolutions outside them.

    Returns an empty list when the network has fewer than two recognisable stages (VGG, small nets).
    """
    stages = [
        n
        for n, m in module.named_modules()
        if _STAGE_NAME.match(n) and next(m.children(), None) is not None and conv_layers(m)
    ]
    if len(stages) < 2:
        return []
    outside = [c for c in conv_layers(module) if not any(c.startswith(s + ".") for s in stages)]
    return stages + outside


def select_layers(module: nn.Module, layers: LayerSelection = None) -> dict[str, nn.Module]:
    """Resolve a layer selection to ``{name: module}``.

    Args:
        module: The network.
        layers: ``None`` or ``"auto"`` (the stages of ResNet-style networks, else every convolution),
            ``"conv"`` (every convolution), ``"stages"``, or a sequence of dotted names / modules.

    Raises:
        UnknownNameError: A name is not a layer of the model (the closest names are listed).
        ValueError: The selection is empty.
    """
    if layers is None or (isinstance(layers, str) and layers in ("auto", "conv", "stages")):
        kind = layers or "auto"
        stages = stage_layers(module) if kind != "conv" else []
        if kind == "stages" and not stages:
            raise InputError(
                f"{type(module).__name__} has no recognisable stages (layerN, blocks.N, stages.N); "
                "use layers='conv' or name the layers"
            )
        names = stages or conv_layers(module)
    elif isinstance(layers, str):
        names = [layers]
    else:
        names = list(layers)  # type: ignore[arg-type]
    if not names:
        raise InputError(f"no layers selected in {type(module).__name__}; name the layers to use")
    resolved = [resolve_layer(module, n) for n in names]
    return dict(resolved)


# ---------------------------------------------------------------------------------------------
# One batched forward and backward pass over all layers


@dataclass
class LayerPass:
    """Activations and gradients of every recorded layer for one chunk of points."""

    start: int
    activations: dict[str, torch.Tensor]
    gradients: dict[str, torch.Tensor]
    scores: torch.Tensor
    targets: torch.Tensor
    logits: torch.Tensor


#: Class per point, or a function choosing them from the chunk's logits (no separate forward pass).
Targets = torch.Tensor | Callable[[torch.Tensor], torch.Tensor]


def layer_passes(
    runner: PassRunner,
    points: torch.Tensor,
    targets: Targets,
    layers: dict[str, nn.Module],
    batch_size: int,
    weights: torch.Tensor | None = None,
) -> Iterator[LayerPass]:
    """Forward ``points`` and back-propagate the target scores to every layer of ``layers``.

    One forward and one ``torch.autograd.grad`` call per chunk of ``batch_size`` points give the
    activations and gradients of all ``layers`` at once (nothing below the lowest layer, no weight
    gradients when the parameters are frozen), through :meth:`PassRunner.gradient_passes`.

    Args:
        runner: The pass runner (model in eval mode, parameters frozen, by the caller).
        points: ``(P, C, H, W)`` inputs.
        targets: ``(P,)`` class per point, or a function mapping a chunk's logits to its classes.
        layers: ``{name: module}`` to record; each must output one ``(N, C, h, w)`` tensor.
        batch_size: Points per pass.
        weights: ``(P,)`` weight of each point's score in the back-propagated sum (0: no gradient
            needed for that point); default all ones.

    Yields:
        One :class:`LayerPass` per chunk, detached, its layers in the order the network ran them.
    """
    chosen: dict[int, torch.Tensor] = {}

    def score(logits: torch.Tensor, _store: dict[str, torch.Tensor], start: int) -> torch.Tensor:
        t = targets(logits.detach()) if callable(targets) else targets[start : start + len(logits)]
        chosen[start] = t.to(logits.device)
        return runner.target_scores(logits, chosen[start])

    for p in runner.gradient_passes(
        points,
        score,
        batch_size,
        layers=layers,
        wrt_input=False,
        purpose="layer attribution",
        weights=weights,
    ):
        yield LayerPass(
            start=p.start,
            activations=p.activations,
            gradients=p.gradients,
            scores=p.scores,
            targets=chosen.pop(p.start).cpu(),
            logits=p.logits,
        )


def _input_baseline(value: float | torch.Tensor, inputs: torch.Tensor) -> torch.Tensor:
    """A baseline for every input: a constant or a ``(C, H, W)`` / ``(N, C, H, W)`` tensor."""
    if not isinstance(value, torch.Tensor):
        return torch.full_like(inputs, float(value))
    b = value.to(inputs.device, inputs.dtype)
    if b.shape == inputs.shape[1:]:
        b = b.expand_as(inputs)
    if b.shape != inputs.shape:
        raise InputError(
            f"baseline of shape {tuple(value.shape)} does not fit inputs of shape {tuple(inputs.shape)}; "
            "give one (C, H, W) baseline or one per input"
        )
    return b


# ---------------------------------------------------------------------------------------------
# The methods


class LayerMethod(Attribution):
    """A layer attribution method: channel attributions at any set of layers from one batched pass.

    Subclasses implement :meth:`channel_attributions`; the single-layer map is its sum over channels
    (rectified when ``rectify`` is set, as in Grad-CAM).
    """

    family = "layer"
    needs_gradients = True
    uses_layer = True
    signed = True
    rectify: ClassVar[bool] = False

    @abstractmethod
    def channel_attributions(
        self, inputs: torch.Tensor, targets: torch.Tensor, layers: dict[str, nn.Module], batch_size: int
    ) -> dict[str, torch.Tensor]:
        """Per-channel attributions ``(N, C, h, w)`` at each layer of ``layers``, from one pass."""

    def channel_sum(self, attributions: torch.Tensor) -> torch.Tensor:
        """A layer's map: the sum over channels ``(N, h, w)`` (ReLU-ed for rectified methods)."""
        total = attributions.sum(dim=1)
        return torch.relu(total) if self.rectify else total

    def _attribute(self, inputs: torch.Tensor, targets: torch.Tensor, batch_size: int) -> torch.Tensor:
        name, layer = self.target_layer(inputs)
        return self.channel_sum(self.channel_attributions(inputs, targets, {name: layer}, batch_size)[name])

    def attribute_layers(
        self,
        inputs: torch.Tensor,
        choose: Callable[[torch.Tensor], torch.Tensor],
        layers: dict[str, nn.Module],
        batch_size: int,
    ) -> tuple[dict[str, torch.Tensor], torch.Tensor, torch.Tensor]:
        """Channel attributions at ``layers``, the targets ``choose`` picks from the logits, and the logits.

        This default runs one forward pass to choose the targets, then :meth:`channel_attributions`.
        """
        logits = self.passes.logits(inputs, batch_size, backend="eager")  # one pass: no fused build
        targets = choose(logits)
        return (
            self.channel_attributions(inputs, targets.to(inputs.device), layers, batch_size),
            targets,
            logits,
        )


class _ProductMethod(LayerMethod):
    """Methods whose points are the inputs: a gradient statistic times the activation.

    The targets can be chosen from the logits of the very pass that computes the gradients.
    """

    gradcam: ClassVar[bool] = False

    def __init__(self, model: ModelLike, *, layer: LayerSpec = None, batch_size: int | None = None):
        super().__init__(model, layer=layer, batch_size=batch_size)

    def products(self, passes: Iterator[LayerPass]) -> dict[str, torch.Tensor]:
        out: dict[str, list[torch.Tensor]] = {}
        for p in passes:
            for n, a in p.activations.items():
                g = p.gradients[n].mean(dim=(2, 3), keepdim=True) if self.gradcam else p.gradients[n]
                out.setdefault(n, []).append(g * a)
        return {n: torch.cat(v) for n, v in out.items()}

    def channel_attributions(
        self, inputs: torch.Tensor, targets: torch.Tensor, layers: dict[str, nn.Module], batch_size: int
    ) -> dict[str, torch.Tensor]:
        return self.products(layer_passes(self.passes, inputs, targets, layers, batch_size))

    def attribute_layers(
        self,
        inputs: torch.Tensor,
        choose: Callable[[torch.Tensor], torch.Tensor],
        layers: dict[str, nn.Module],
        batch_size: int,
    ) -> tuple[dict[str, torch.Tensor], torch.Tensor, torch.Tensor]:
        passes = list(layer_passes(self.passes, inputs, choose, layers, batch_size))
        targets = torch.cat([p.targets for p in passes])
        return self.products(iter(passes)), targets, torch.cat([p.logits for p in passes])


@register
class LayerGradXAct(_ProductMethod):
    """Gradient x activation at a layer: ``A * dy/dA``, summed over channels.

    For a network that is linear after the layer (``y = <w, A> + b``) this is exactly ``w * A``.

    Shape:
        A signed ``(N, H, W)`` map, computed at the layer's resolution and upsampled.

    References:
        Shrikumar et al. Not Just a Black Box: Learning Important Features Through Propagating
        Activation Differences. arXiv:1605.01713, 2016 (gradient x input, here at a hidden layer).
    """

    name = "layer_gradxact"
    summary = "sum_k A_k * dy/dA_k at a layer (one pass gives every layer)"
    reference = "Shrikumar et al. 2016"


class LayerGradCAM(_ProductMethod):
    """Grad-CAM at any set of layers: ``ReLU(sum_k mean(dy/dA_k) A_k)``.

    Not registered (the single-layer method is :class:`~cnnlens.attribution.methods.cam.GradCAM`,
    whose paper it follows); used by the atlas, where it gives the same map as ``gradcam`` at each
    layer from one pass.
    """

    name = "gradcam"
    summary = "ReLU(sum_k mean(dy/dA_k) A_k) at each layer"
    reference = "Selvaraju et al. 2017"
    signed = False
    rectify = True
    gradcam = True


@register
class LayerIntegratedGradients(LayerMethod):
    """Layer Integrated Gradients along the straight input path, in its conductance form.

    With ``x(a) = x' + a (x - x')`` and ``A(a)`` the layer's activation at ``x(a)``, the attribution of
    unit ``j`` is ``int_0^1 dy/dA_j (x(a)) dA_j/da da``, evaluated with the trapezoid rule on
    ``steps + 1`` points: ``sum_k (g_k + g_{k+1}) / 2 * (A_{k+1} - A_k)``. The steps are one batch, so
    one forward and backward pass over it gives every layer at once. Completeness holds at *every*
    layer (the values sum to ``y(x) - y(x')`` up to the quadrature error), and exactly, for any number
    of steps, when the network is linear after the layer; when the layer is linear in the input it
    equals layer IG ``(A(x) - A(x')) * mean gradient``.

    Shape:
        A signed ``(N, H, W)`` map, computed at the layer's resolution and upsampled.

    References:
        Sundararajan, Taly, Yan. Axiomatic Attribution for Deep Networks. ICML 2017.
        Dhamdhere, Sundararajan, Yan. How Important Is a Neuron? ICLR 2019 (conductance).
    """

    name = "layer_ig"
    summary = "integrated gradients at a layer (conductance form, complete at every layer)"
    reference = "Sundararajan et al. 2017; Dhamdhere et al. 2019"

    def __init__(
        self,
        model: ModelLike,
        *,
        layer: LayerSpec = None,
        steps: int = 16,
        baseline: float | torch.Tensor = 0.0,
        batch_size: int | None = None,
    ):
        super().__init__(model, layer=layer, batch_size=batch_size)
        check_positive_int("steps", steps)
        if not isinstance(baseline, (int, float, torch.Tensor)) or isinstance(baseline, bool):
            raise InputTypeError(f"baseline must be a number or a tensor, got {type(baseline).__name__}")
        self.steps = steps
        self.baseline = baseline

    def path(self, inputs: torch.Tensor) -> torch.Tensor:
        """The ``N * (steps + 1)`` points of the straight paths, input-major: ``(N*(steps+1), C, H, W)``."""
        base = _input_baseline(self.baseline, inputs)
        alphas = torch.linspace(0, 1, self.steps + 1, device=inputs.device).view(1, -1, 1, 1, 1)
        points = base[:, None] + alphas * (inputs - base)[:, None]
        return points.flatten(0, 1)

    def channel_attributions(
        self, inputs: torch.Tensor, targets: torch.Tensor, layers: dict[str, nn.Module], batch_size: int
    ) -> dict[str, torch.Tensor]:
        m = self.steps + 1
        points = self.path(inputs)
        owner = torch.arange(len(points), device=inputs.device) // m
        out: dict[str, torch.Tensor] = {}
        prev: LayerPass | None = None
        for p in layer_passes(self.passes, points, targets.repeat_interleave(m), layers, batch_size):
            idx = torch.arange(p.start, p.start + len(p.scores), device=inputs.device)
            for n in p.activations:
                a, g = p.activations[n], p.gradients[n]
                if prev is not None:
                    a, g = torch.cat([prev.activations[n][-1:], a]), torch.cat([prev.gradients[n][-1:], g])
                terms = 0.5 * (g[1:] + g[:-1]) * (a[1:] - a[:-1])
                ends = idx if prev is not None else idx[1:]
                keep = ends % m != 0  # a step never spans two inputs' paths
                if n not in out:
                    out[n] = torch.zeros(len(inputs), *a.shape[1:], device=a.device, dtype=a.dtype)
                out[n].index_add_(0, owner[ends][keep], terms[keep])
            prev = p
        return out


@register
class LayerGradientShap(LayerMethod):
    """Layer GradientSHAP (expected gradients at a layer) with a set of baselines.

    For ``n_samples`` draws of a baseline ``b`` from ``baselines``, ``a ~ U(0, 1)`` and Gaussian noise
    ``e`` (std ``stdev``), the gradient at ``z = b + a (x - b) + e`` is multiplied by the change of the
    layer's activation ``A(x) - A(b)`` and averaged. The inputs, the baselines and all ``z`` form one
    batch: one forward and backward pass give every layer. The draws come from a generator seeded with
    ``seed`` and are the same for every input, so results do not depend on the batch.

    Shape:
        A signed ``(N, H, W)`` map, computed at the layer's resolution and upsampled.

    References:
        Lundberg, Lee. A Unified Approach to Interpreting Model Predictions. NeurIPS 2017.
        Erion et al. Improving performance of deep learning models with axiomatic attribution priors
        and expected gradients. Nature Machine Intelligence 2021.
    """

    name = "layer_gradshap"
    quick_params: ClassVar[dict[str, Any]] = {"n_samples": 8}
    summary = "expected gradients at a layer over a set of baselines (seeded)"
    reference = "Lundberg & Lee 2017; Erion et al. 2021"

    def __init__(
        self,
        model: ModelLike,
        *,
        layer: LayerSpec = None,
        n_samples: int = 16,
        baselines: torch.Tensor | None = None,
        n_baselines: int = 8,
        stdev: float = 0.0,
        seed: int = 0,
        batch_size: int | None = None,
    ):
        super().__init__(model, layer=layer, batch_size=batch_size)
        for key, value in (("n_samples", n_samples), ("n_baselines", n_baselines)):
            check_positive_int(key, value)
        if not isinstance(stdev, (int, float)) or stdev < 0:
            raise InputError(f"stdev must be a non-negative number, got {stdev!r}")
        if baselines is not None and (not isinstance(baselines, torch.Tensor) or baselines.ndim != 4):
            raise InputError("baselines must be a (B, C, H, W) tensor of preprocessed images, or None")
        self.n_samples = n_samples
        self.baselines = baselines
        self.n_baselines = n_baselines
        self.stdev = float(stdev)
        self.seed = seed

    def baseline_set(self, inputs: torch.Tensor) -> torch.Tensor:
        """The baselines: the given ones, or the all-zero input plus ``n_baselines - 1`` N(0, 1) images."""
        if self.baselines is not None:
            if self.baselines.shape[1:] != inputs.shape[1:]:
                raise InputError(
                    f"baselines have shape {tuple(self.baselines.shape[1:])} per image, the inputs "
                    f"{tuple(inputs.shape[1:])}; give baselines preprocessed like the inputs"
                )
            return self.baselines.to(inputs.device, inputs.dtype)
        gen = torch.Generator().manual_seed(self.seed + 1)
        noise = torch.randn(self.n_baselines - 1, *inputs.shape[1:], generator=gen)
        return torch.cat([torch.zeros(1, *inputs.shape[1:]), noise]).to(inputs.device, inputs.dtype)

    def draws(self, shape: torch.Size, count: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Baseline index ``(n,)``, interpolation ``(n,)`` and noise ``(n, C, H, W)`` of the samples."""
        gen = torch.Generator().manual_seed(self.seed)
        which = torch.randint(count, (self.n_samples,), generator=gen)
        alpha = torch.rand(self.n_samples, generator=gen)
        noise = torch.randn(self.n_samples, *shape, generator=gen) * self.stdev
        return which, alpha, noise

    def channel_attributions(
        self, inputs: torch.Tensor, targets: torch.Tensor, layers: dict[str, nn.Module], batch_size: int
    ) -> dict[str, torch.Tensor]:
        n, s = len(inputs), self.n_samples
        bases = self.baseline_set(inputs)
        which, alpha, noise = (t.to(inputs.device) for t in self.draws(inputs.shape[1:], len(bases)))
        b = bases[which]
        z = b[None] + alpha.view(1, -1, 1, 1, 1) * (inputs[:, None] - b[None]) + noise[None]
        points = torch.cat([inputs, bases, z.flatten(0, 1)])
        head = n + len(bases)
        t = torch.cat([targets, targets.new_zeros(len(bases)), targets.repeat_interleave(s)])
        weights = (torch.arange(len(points), device=inputs.device) >= head).float()
        fixed: dict[str, list[torch.Tensor]] = {}
        out: dict[str, torch.Tensor] = {}
        for p in layer_passes(self.passes, points, t, layers, batch_size, weights):
            for k, a in p.activations.items():
                g = p.gradients[k]
                fixed.setdefault(k, []).append(a[: max(0, head - p.start)])
                idx = torch.arange(p.start, p.start + len(a), device=inputs.device)
                keep = idx >= head
                if not keep.any():
                    continue
                ref = torch.cat(fixed[k])
                j = idx[keep] - head
                delta = ref[j // s] - ref[n + which[j % s]]
                if k not in out:
                    out[k] = torch.zeros(n, *a.shape[1:], device=a.device, dtype=a.dtype)
                out[k].index_add_(0, j // s, delta * g[keep] / s)
        return out
