"""Class activation maps: weighted sums of a convolutional layer's feature maps.

Most methods here differ only in how they weight the feature maps ``A_k`` by functions of the
gradient ``dy/dA_k``: each is one :meth:`GradientCAM.weights` override of the shared
``ReLU(sum_k w_k * A_k)``. CAM reads its weights from the linear head instead.
"""

from __future__ import annotations

from abc import abstractmethod

import torch
from torch import nn

from cnnlens.attribution.core.base import (
    Attribution,
    LayerSpec,
    ModelLike,
    OnePass,
    TargetPicker,
    chunk_targets,
)
from cnnlens.attribution.core.registry import register
from cnnlens.attribution.engine.runner import feature_map
from cnnlens.errors import InputError
from cnnlens.models.hooks import capture_outputs
from cnnlens.models.tokens import TokenLayout, prefix_tokens


def layer_gradient(
    attribution: Attribution,
    inputs: torch.Tensor,
    targets: torch.Tensor | TargetPicker,
    batch_size: int,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Activations ``A`` of the method's target layer and ``d(target score)/dA``, both ``(N, C, h, w)``.

    Only the gradient at that layer is computed (no weight gradients, nothing below the layer). With a
    :class:`~cnnlens.attribution.core.base.TargetPicker` the targets come from the same forward pass.
    The passes run as the method's pass runner says.
    """
    name, layer = attribution.target_layer(inputs)
    runner = attribution.passes

    def score(logits: torch.Tensor, _store: dict[str, torch.Tensor], start: int) -> torch.Tensor:
        return runner.target_scores(logits, chunk_targets(targets, logits, start))

    passes = list(
        runner.gradient_passes(
            inputs, score, batch_size, layers={name: layer}, wrt_input=False, purpose="CAM methods"
        )
    )
    return torch.cat([p.activations[name] for p in passes]), torch.cat([p.gradients[name] for p in passes])


class GradientCAM(OnePass):
    """Base of the gradient-weighted CAMs: ``ReLU(sum_k w_k * A_k)`` with ``w = weights(A, dy/dA)``.

    Subclasses implement :meth:`weights` only.
    """

    family = "cam"
    needs_gradients = True
    uses_layer = True
    #: bf16 maps of the gradient-weighted CAMs stay faithful, but a bf16 pass cannot choose the target
    #: (a near tie could flip), so it costs an fp32 forward besides: slower than the one fp32 pass that
    #: gives target, score and map together. ``"auto"`` stays fp32 (``docs/decisions.md``, "Precision").
    bf16_faithful = False

    def __init__(
        self,
        model: ModelLike,
        *,
        layer: LayerSpec = None,
        batch_size: int | None = None,
        **settings: str,
    ):
        super().__init__(model, layer=layer, batch_size=batch_size, **settings)

    @abstractmethod
    def weights(self, acts: torch.Tensor, grads: torch.Tensor) -> torch.Tensor:
        """Weights of the feature maps, ``(N, C, 1, 1)`` or per position ``(N, C, h, w)``."""

    def _attribute_picking(self, inputs: torch.Tensor, picker: TargetPicker, batch_size: int) -> torch.Tensor:
        acts, grads = layer_gradient(self, inputs, picker, batch_size)
        return torch.relu((self.weights(acts, grads) * acts).sum(dim=1))


@register
class GradCAM(GradientCAM):
    """Grad-CAM: feature maps weighted by the spatial mean of their gradients, then ReLU.

    Shape:
        A ``(N, H, W)`` non-negative map, computed at the layer's resolution and upsampled.

    References:
        Selvaraju et al. Grad-CAM: Visual Explanations from Deep Networks via Gradient-based
        Localization. ICCV 2017.
    """

    name = "gradcam"
    summary = "ReLU(sum_k mean(dy/dA_k) A_k) at a conv layer"
    reference = "Selvaraju et al. 2017"

    def weights(self, acts: torch.Tensor, grads: torch.Tensor) -> torch.Tensor:
        return grads.mean(dim=(2, 3), keepdim=True)


@register
class GradCAMPlusPlus(GradientCAM):
    """Grad-CAM++: positive gradients weighted per position by the closed-form ``alpha`` of the paper.

    With the exponential of the logit as score, ``alpha = g^2 / (2 g^2 + sum_ab A_ab g^3)`` where
    ``g = dy/dA`` (``alpha = 0`` where that denominator vanishes), and
    ``w_k = sum_ij alpha_kij ReLU(g_kij)``.

    Shape:
        A ``(N, H, W)`` non-negative map, computed at the layer's resolution and upsampled.

    References:
        Chattopadhay, Sarkar, Howlader, Balasubramanian. Grad-CAM++: Generalized Gradient-Based
        Visual Explanations for Deep Convolutional Networks. WACV 2018.
    """

    name = "gradcampp"
    summary = "Grad-CAM with per-position weights alpha on the positive gradients"
    reference = "Chattopadhay et al. 2018"

    def weights(self, acts: torch.Tensor, grads: torch.Tensor) -> torch.Tensor:
        g2 = grads.pow(2)
        denominator = 2 * g2 + acts.sum(dim=(2, 3), keepdim=True) * g2 * grads
        safe = torch.where(denominator != 0, denominator, torch.ones_like(denominator))
        alpha = torch.where(denominator != 0, g2 / safe, torch.zeros_like(g2))
        return (alpha * grads.clamp(min=0)).sum(dim=(2, 3), keepdim=True)


@register
class LayerCAM(GradientCAM):
    """Layer-CAM: each position of each feature map weighted by its own positive gradient.

    The per-layer map of the paper (its ``tanh`` rescaling is for fusing shallow layers and is not
    applied).

    Shape:
        A ``(N, H, W)`` non-negative map, computed at the layer's resolution and upsampled.

    References:
        Jiang, Zhang, Hou, Cheng, Wei. LayerCAM: Exploring Hierarchical Class Activation Maps for
        Localization. IEEE TIP 2021.
    """

    name = "layercam"
    summary = "ReLU(sum_k ReLU(dy/dA_k) * A_k), positionwise"
    reference = "Jiang et al. 2021"

    def weights(self, acts: torch.Tensor, grads: torch.Tensor) -> torch.Tensor:
        return grads.clamp(min=0)


def linear_head(model: nn.Module, channels: int, classes: int) -> nn.Linear | None:
    """The last ``nn.Linear(channels -> classes)`` of ``model``, if any."""
    heads = [
        m
        for m in model.modules()
        if isinstance(m, nn.Linear) and m.in_features == channels and m.out_features == classes
    ]
    return heads[-1] if heads else None


@register
class CAM(OnePass):
    """CAM: the feature maps weighted by the linear classifier's weights of the target class.

    Only for networks whose logits are ``W @ global_average_pool(A) + b`` for the layer's output
    ``A``: the head is found as the model's last ``nn.Linear(C -> K)`` and the identity is checked
    on every batch, so any other head (VGG's three-layer classifier, a conv layer after ``A``, ...)
    raises a ``ValueError``. As in the paper the map is not rectified: its mean plus the bias is the
    target logit, and on such networks ``ReLU(CAM)`` is ``h * w`` times Grad-CAM.

    On a vision transformer the layer's patch tokens are the feature maps (on their grid, see
    :mod:`cnnlens.models.tokens`): CAM applies to a head that is one linear layer over the mean of
    the patch tokens (timm's ``global_pool="avg"`` without ``fc_norm``, at layer ``norm``), not to one
    that reads the class token (``global_pool="token"``, the default), which stops at once.

    Shape:
        A ``(N, H, W)`` signed map, computed at the layer's resolution and upsampled.

    References:
        Zhou, Khosla, Lapedriza, Oliva, Torralba. Learning Deep Features for Discriminative
        Localization. CVPR 2016.
    """

    name = "cam"
    family = "cam"
    summary = "sum_k W[c, k] A_k for global-average-pool + linear heads"
    reference = "Zhou et al. 2016"
    uses_layer = True
    signed = True
    explains_functions = False

    @classmethod
    def unsupported(cls, module: nn.Module) -> str | None:
        """Models whose classifier ends in two or more linear layers in a row (VGG, an MLP head,
        the C-Net of Fan et al.'s saliency-aware network) have no single linear layer after the
        pooling, so CAM does not apply; nor does a vision transformer whose head reads the class
        token."""
        if getattr(module, "global_pool", None) == "token" and getattr(module, "num_prefix_tokens", 0):
            return (
                "its head reads the class token (global_pool='token'), not the mean of the patch tokens "
                "after one linear layer; use gradcam"
            )
        for parent in module.modules():
            linears = [m for m in parent.children() if isinstance(m, nn.Linear)]
            if isinstance(parent, nn.Sequential) and len(linears) > 1:
                last = [m for m in module.modules() if isinstance(m, nn.Linear)][-1]
                if last is linears[-1]:
                    return (
                        "its classifier ends in several linear layers, not one after global average "
                        "pooling; use gradcam"
                    )
        return None

    def __init__(self, model: ModelLike, *, layer: LayerSpec = None, batch_size: int | None = None):
        super().__init__(model, layer=layer, batch_size=batch_size)

    def _attribute_picking(self, inputs: torch.Tensor, picker: TargetPicker, batch_size: int) -> torch.Tensor:
        name, layer = self.target_layer(inputs)
        maps = []
        for start in range(0, len(inputs), batch_size):
            tokens = TokenLayout.of(self.module, (inputs.shape[2], inputs.shape[3]))
            with capture_outputs({name: layer}, tokens=tokens) as store, torch.inference_mode():
                logits = self.module(inputs[start : start + batch_size]).float()
                acts = feature_map(store, name, "CAM methods").float()
            t = picker.take(logits, start)
            head = self._head(name, acts, logits)
            cam = torch.einsum("nk,nkhw->nhw", head.weight.detach().float()[t], acts)
            self._check_identity(name, cam, head, t, logits)
            maps.append(cam)
        return torch.cat(maps)

    def _head(self, name: str, acts: torch.Tensor, logits: torch.Tensor) -> nn.Linear:
        head = linear_head(self.module, acts.shape[1], logits.shape[1])
        if head is None:
            raise InputError(
                f"CAM needs layer {name!r} ({acts.shape[1]} channels) to reach the {logits.shape[1]} "
                f"logits through global average pooling and one linear layer, but "
                f"{type(self.module).__name__} has no nn.Linear({acts.shape[1]} -> {logits.shape[1]}); "
                "use gradcam (equal to CAM up to scale where CAM applies), or pass layer= the last "
                "feature map before the pooling"
            )
        return head

    def _check_identity(
        self, name: str, cam: torch.Tensor, head: nn.Linear, targets: torch.Tensor, logits: torch.Tensor
    ) -> None:
        bias = head.bias.detach().float()[targets] if head.bias is not None else 0.0
        predicted = cam.mean(dim=(1, 2)) + bias
        actual = logits.gather(1, targets.view(-1, 1)).squeeze(1)
        error = (predicted - actual).abs().max()
        where = " (on a transformer, its last norm)" if prefix_tokens(self.module) is not None else ""
        if error > 1e-4 + 1e-3 * actual.abs().max():
            raise InputError(
                f"CAM needs logits = W @ global_average_pool(A) + b for the output A of layer {name!r}, "
                f"but {type(self.module).__name__}'s logits differ from that by up to {float(error):.3g} "
                "(a multi-layer head, or more layers between A and the classifier); use gradcam, or "
                f"pass layer= the last feature map{where} before the global pooling"
            )
