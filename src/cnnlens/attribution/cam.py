"""Class activation maps: weighted sums of a convolutional layer's feature maps."""

from __future__ import annotations

import torch

from cnnlens.attribution.base import Attribution, LayerSpec, ModelLike
from cnnlens.attribution.hooks import capture_outputs
from cnnlens.attribution.registry import register


def layer_gradient(
    attribution: Attribution, inputs: torch.Tensor, targets: torch.Tensor, batch_size: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Activations ``A`` of the method's target layer and ``d(target logit)/dA``, both ``(N, C, h, w)``.

    Only the gradient at that layer is computed (no weight gradients, nothing below the layer).
    """
    name, layer = attribution.target_layer(inputs)
    acts, grads = [], []
    for x, t in zip(inputs.split(batch_size), targets.split(batch_size)):
        with capture_outputs({name: layer}) as store, torch.enable_grad():
            logits = attribution.module(x.detach().requires_grad_(True))
            if name not in store:
                raise RuntimeError(f"layer {name!r} did not run in the forward pass")
            a = store[name]
            if a.ndim != 4:
                raise ValueError(
                    f"layer {name!r} outputs shape {tuple(a.shape)}; CAM methods need a (N, C, H, W) "
                    "feature map, choose a convolutional layer"
                )
            (g,) = torch.autograd.grad(logits.float().gather(1, t.view(-1, 1)).sum(), a)
        acts.append(a.detach())
        grads.append(g.detach())
    return torch.cat(acts), torch.cat(grads)


@register
class GradCAM(Attribution):
    """Grad-CAM: feature maps weighted by the spatial mean of their gradients, then ReLU.

    Shape:
        A ``(N, H, W)`` non-negative map, computed at the layer's resolution and upsampled.

    References:
        Selvaraju et al. Grad-CAM: Visual Explanations from Deep Networks via Gradient-based
        Localization. ICCV 2017.
    """

    name = "gradcam"
    family = "cam"
    summary = "ReLU(sum_k mean(dy/dA_k) A_k) at a conv layer"
    reference = "Selvaraju et al. 2017"
    needs_gradients = True
    uses_layer = True

    def __init__(self, model: ModelLike, *, layer: LayerSpec = None, batch_size: int | None = None):
        super().__init__(model, layer=layer, batch_size=batch_size)

    def _attribute(self, inputs: torch.Tensor, targets: torch.Tensor, batch_size: int) -> torch.Tensor:
        acts, grads = layer_gradient(self, inputs, targets, batch_size)
        weights = grads.mean(dim=(2, 3), keepdim=True)
        return torch.relu((weights * acts).sum(dim=1))
