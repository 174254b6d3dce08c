"""Score-CAM and Ablation-CAM: class activation maps weighted by forward passes, not gradients."""

from __future__ import annotations

from collections.abc import Iterator

import torch
import torch.nn.functional as F
from torch import nn

from cnnlens.attribution.core.base import Attributed, Attribution, LayerSpec, ModelLike
from cnnlens.attribution.core.registry import register
from cnnlens.attribution.engine.runner import feature_map
from cnnlens.attribution.engine.split import LayerSplit
from cnnlens.errors import InputError
from cnnlens.models.hooks import capture_outputs
from cnnlens.models.layers import LayerInfo, resolve_layer, trace_layers
from cnnlens.models.loaded import LoadedModel
from cnnlens.models.tokens import TokenLayout
from cnnlens.validation import check_positive_int, check_real, check_score


def _layer_activations(method: Attribution, inputs: torch.Tensor, batch_size: int) -> torch.Tensor:
    """The method's target layer output for ``inputs``, without autograd: ``(N, C, h, w)`` (a vision
    transformer's patch tokens on their grid).

    The output is copied when the layer returns it, so a later in-place operation cannot change it.
    """
    name, layer = method.target_layer(inputs)
    tokens = TokenLayout.of(method.module, (inputs.shape[2], inputs.shape[3]))
    out: list[torch.Tensor] = []
    with torch.inference_mode():
        for chunk in inputs.split(batch_size):
            with capture_outputs({name: layer}, tokens=tokens) as store:
                method.module(chunk)
            out.append(feature_map(store, name, "CAM methods").clone())
    return torch.cat(out).float()


#: How Score-CAM turns the masked inputs' scores into channel weights: the scores themselves (the
#: paper), or a softmax of them across channels.
WEIGHTS = ("score", "softmax")


def narrow_cam_layer(table: list[LayerInfo], default: str, max_channels: int) -> str:
    """The last layer up to ``default`` (execution order) whose output has ``default``'s spatial size
    and at most ``max_channels`` channels; ``default`` itself when it has few enough or none does.
    A container whose sublayers run at other resolutions (a whole backbone) is passed over.

    Args:
        table: The model's layers in execution order with their output shapes (:func:`trace_layers`).
        default: The model's default CAM layer.
        max_channels: The most channels (masked forward passes per image) allowed.
    """
    shapes = {info.name: info.output_shape for info in table}
    target = shapes.get(default)
    if target is None or len(target) != 3 or target[0] <= max_channels:
        return default

    def same_size(shape: tuple[int, ...] | None) -> bool:
        return shape is not None and len(shape) == 3 and shape[1:] == target[1:]

    def mixed(name: str) -> bool:  # a container spanning several resolutions (all of ``blocks``)
        return any(n.startswith(name + ".") and not same_size(s) for n, s in shapes.items() if s)

    best = default
    for info in table:
        if info.name == default:
            break
        shape = info.output_shape
        narrow = shape is not None and same_size(shape) and shape[0] <= max_channels
        if narrow and not info.kind.startswith("Adaptive") and not mixed(info.name):
            best = info.name
    return best


class _ForwardCAM(Attribution):
    """A CAM weighted by forward passes: the layer, batch size and pass runner settings."""

    family = "cam"
    uses_layer = True
    bf16_faithful = True  # measured: docs/decisions.md, "Precision"

    def __init__(
        self,
        model: ModelLike,
        *,
        layer: LayerSpec = None,
        batch_size: int | str | None = None,
        **settings: str,
    ):
        super().__init__(model, layer=layer, batch_size=batch_size, **settings)


@register
class ScoreCAM(_ForwardCAM):
    """Score-CAM: feature maps weighted by how much each one, used as an input mask, raises the score.

    Each channel ``A_k`` of the layer is upsampled to the input size and min-max normalised to
    ``[0, 1]``; the input multiplied by it (``fill`` where the mask is 0) is scored, and the map is
    ``ReLU(sum_k S_k A_k)`` with ``S_k`` the target's softmax probability on the masked input, as in
    the paper and its reference code (no normalisation across channels). ``weights="softmax"``
    instead takes a softmax over channels of the scores, ``softmax(S)_k``: with probabilities in
    ``[0, 1]`` those weights differ by at most a factor of e, so the map is close to the plain sum of
    the activations and hardly depends on the class (measured in docs/methods.md). ``score="logit"``
    scores by the target's logit. Masks are made ``batch_size`` channels at a time.

    Without ``layer=`` the layer is the last one at the resolution of the model's default CAM layer
    with at most ``max_channels`` channels (:func:`narrow_cam_layer`): every channel costs one forward
    pass, and on EfficientNet-Lite0 the 320-channel ``blocks.6`` is both 4x cheaper than the
    1280-channel ``bn2`` and far more class-sensitive (docs/methods.md, issue 21).

    Shape:
        A ``(N, H, W)`` non-negative map at the layer's resolution, upsampled.

    References:
        Wang et al. Score-CAM: Score-Weighted Visual Explanations for Convolutional Neural
        Networks. CVPR Workshops 2020.
    """

    name = "scorecam"
    summary = "ReLU(sum_k P_target(x masked by A_k) A_k), P the softmax probability"
    reference = "Wang et al. 2020"

    def __init__(
        self,
        model: ModelLike,
        *,
        layer: LayerSpec = None,
        fill: float = 0.0,
        score: str = "probability",
        weights: str = "score",
        max_channels: int = 512,
        batch_size: int | str | None = None,
        **settings: str,
    ):
        super().__init__(model, layer=layer, batch_size=batch_size, **settings)
        self.max_channels = check_positive_int("max_channels", max_channels)
        self.fill = check_real("fill", fill)
        self.score = check_score(score)
        if weights not in WEIGHTS:
            raise InputError(f"weights must be one of {', '.join(WEIGHTS)}, got {weights!r}")
        self.weights = weights

    def target_layer(self, inputs: torch.Tensor) -> tuple[str, nn.Module]:
        """``layer=``, or the last layer at the default CAM layer's resolution with at most
        ``max_channels`` channels (:func:`narrow_cam_layer`)."""
        name, module = super().target_layer(inputs)
        if self.layer is not None:
            return name, module
        if isinstance(self.model, LoadedModel):
            table = self.model.layer_table
        else:
            table = trace_layers(self.module, (inputs.shape[2], inputs.shape[3]), inputs.shape[1])
        return resolve_layer(self.module, narrow_cam_layer(table, name, self.max_channels))

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
            weights = self.passes.scores(batches, t, self.score)
            if self.weights == "softmax":
                weights = weights.softmax(0)
            maps.append(torch.relu(torch.einsum("c,chw->hw", weights.to(a.device), a)))
        return torch.stack(maps)


@register
class AblationCAM(_ForwardCAM):
    """Ablation-CAM: feature maps weighted by the score drop when each one is set to zero.

    The network runs up to the layer once per image (:class:`~cnnlens.attribution.engine.split.LayerSplit`),
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
    summary = "ReLU(sum_k (y - y without A_k) / y * A_k)"
    reference = "Desai & Ramaswamy 2020"

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
            tokens = TokenLayout.of(self.module, (inputs.shape[2], inputs.shape[3]))
            split = LayerSplit(self.module, name, layer, check=inputs[:1], tokens=tokens)
        maps = []
        for image, t in zip(inputs, targets.tolist()):
            with torch.inference_mode():
                head = split.head(image[None])
            acts = feature_map({name: head.activation}, name, "Ablation-CAM")
            tail = lambda b, head=head: split.tail(b, head)  # noqa: E731
            base = self.passes.scores(iter([acts.clone()]), t, "logit", forward=tail)
            ablated = self.passes.scores(self._ablated(acts, batch_size), t, "logit", forward=tail)
            y = float(base[0])
            weights = (base - ablated) / (y if abs(y) > 1e-12 else 1e-12)
            maps.append(torch.relu(torch.einsum("c,chw->hw", weights.to(acts.device), acts[0].float())))
        return Attributed(torch.stack(maps), {"split": split.split})
