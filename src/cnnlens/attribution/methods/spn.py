"""The saliency map a saliency-aware network predicts for itself (the SPN of Fan et al.)."""

from __future__ import annotations

import torch
from torch import nn

from cnnlens.attribution.core.base import Attribution
from cnnlens.attribution.core.registry import register


@register
class SPNMap(Attribution):
    """The map of the network's own saliency prediction net (SPN), a probability per pixel.

    A network trained with ``cnnlens train --saliency-aware`` has a branch that predicts where
    the object is, supervised by segmentation masks; this method shows that prediction next to the
    post-hoc explanations. It is one map per image, the same whatever the target class, and costs
    one forward pass of the backbone. Models without an SPN are rejected (and left out of
    ``--method all``).

    References:
        Fan, Li, Song, Yang. Explainable deep learning-based classification on small-sized
        dataset: F-Net, C-Net and the saliency prediction net trained with
        ``L = L_cls + lambda * L_loc`` on partially masked data.
    """

    name = "spn"
    class_sensitive = False  # the network's own saliency map: one map for every class
    family = "model"
    summary = "the saliency map the network's own SPN predicts (saliency-aware training); class-agnostic"
    reference = "Fan et al."

    @classmethod
    def unsupported(cls, module: nn.Module) -> str | None:
        if getattr(module, "spn", None) is None or not callable(getattr(module, "saliency", None)):
            return "it has no saliency prediction net; train one with `cnnlens train --saliency-aware`"
        return None

    def _attribute(self, inputs: torch.Tensor, targets: torch.Tensor, batch_size: int) -> torch.Tensor:
        saliency = self.module.saliency
        with torch.no_grad():
            return torch.cat([saliency(chunk) for chunk in inputs.split(batch_size)]).float()  # type: ignore[operator]
