"""Gradient methods: the derivative of the target score with respect to the input pixels."""

from __future__ import annotations

import torch

from cnnlens.attribution.base import Attribution, ModelLike
from cnnlens.attribution.registry import register


def input_gradient(
    module: torch.nn.Module, inputs: torch.Tensor, targets: torch.Tensor, batch_size: int
) -> torch.Tensor:
    """d(target logit)/d(input) for each input, ``(N, C, H, W)``, computed in chunks.

    Only the input gradient is computed: the caller has switched parameter gradients off.
    """
    grads = []
    for x, t in zip(inputs.split(batch_size), targets.split(batch_size)):
        x = x.detach().requires_grad_(True)
        with torch.enable_grad():
            score = module(x).float().gather(1, t.view(-1, 1)).sum()
            (g,) = torch.autograd.grad(score, x)
        grads.append(g.detach())
    return torch.cat(grads)


@register
class Saliency(Attribution):
    """Vanilla gradient saliency: the largest absolute gradient over the colour channels.

    Shape:
        A ``(N, H, W)`` non-negative map at the input resolution.

    References:
        Simonyan, Vedaldi, Zisserman. Deep Inside Convolutional Networks: Visualising Image
        Classification Models and Saliency Maps. ICLR workshop 2014.
    """

    name = "saliency"
    family = "gradient"
    summary = "max over channels of |d score / d pixel|"
    reference = "Simonyan et al. 2014"
    needs_gradients = True

    def __init__(self, model: ModelLike, *, batch_size: int | None = None):
        super().__init__(model, batch_size=batch_size)

    def _attribute(self, inputs: torch.Tensor, targets: torch.Tensor, batch_size: int) -> torch.Tensor:
        return input_gradient(self.module, inputs, targets, batch_size).abs().amax(dim=1)
