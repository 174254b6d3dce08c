"""The saliency-aware classifier of Fan et al.: F-Net + C-Net + SPN.

* F-Net: a backbone up to its last feature map (``(N, C, h, w)``, 7x7 for 224 px ResNets).
* C-Net: global average pooling, then two fully connected layers (1024 units, then K).
* SPN (saliency prediction net): ``N`` blocks of x2 upsampling, 3x3 convolution, batch norm and
  ReLU, then a last upsampling step to the exact input size and a 1x1 convolution to one channel.
  ``N`` follows from the resolution: ``round(log2(input / feature)) - 1`` blocks (4 for 7 -> 224).

``forward`` returns the class logits only, so the network is an ordinary classifier for every
cnnlens command; :meth:`SaliencyAwareNet.saliency` returns the SPN map (logits, one channel).

References:
    Fan, Li, Song, Yang. Explainable deep learning-based classification on small-sized dataset
    (project report; no year given): C-Net with 1024 and K units, SPN of upsampling blocks,
    L = L_cls + lambda * L_loc with the localisation loss counted only for images that have a mask.
"""

from __future__ import annotations

import math
from collections import OrderedDict

import torch
import torch.nn.functional as F
from torch import nn

from cnnlens.errors import InputError

LOC_LOSSES = ("ce", "l1", "l2")


def backbone_features(module: nn.Module) -> nn.Module:
    """The F-Net of a classifier: the part that maps an image to its last spatial feature map.

    Supports timm models (``forward_features``), torchvision ResNet/RegNet-style models (every child
    before the global pool) and models with a ``features`` attribute (VGG, EfficientNet, MobileNet,
    DenseNet, ConvNeXt).

    Raises:
        ValueError: The backbone's feature part cannot be identified.
    """
    if hasattr(module, "forward_features") and hasattr(module, "num_features"):
        return _TimmFeatures(module)
    names = [n for n, _ in module.named_children()]
    if {"layer4", "avgpool", "fc"} <= set(names):  # torchvision ResNet family
        kept = OrderedDict((n, m) for n, m in module.named_children() if n not in ("avgpool", "fc"))
        return nn.Sequential(kept)
    features = getattr(module, "features", None)
    if isinstance(features, nn.Module):
        return features
    raise InputError(
        f"cannot find the feature extractor of {type(module).__name__}; use a timm model, a "
        "torchvision ResNet, or a model with a `features` attribute"
    )


class _TimmFeatures(nn.Module):
    """A timm model's ``forward_features`` as a module (the classifier head is dropped)."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        model.reset_classifier(0)  # type: ignore[operator]
        self.model = model

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out: torch.Tensor = self.model.forward_features(x)  # type: ignore[operator]
        return out


def spn_blocks(input_size: int, feature_size: int) -> int:
    """How many x2 upsampling blocks the SPN needs before its final step to ``input_size``."""
    if feature_size < 1 or input_size < feature_size:
        raise InputError(f"feature map side {feature_size} must be between 1 and the input side {input_size}")
    return max(round(math.log2(input_size / feature_size)) - 1, 0)


class SaliencyPredictionNet(nn.Module):
    """Upsampling blocks (upsample x2, conv 3x3, BN, ReLU) then a final resize and a 1x1 conv."""

    def __init__(self, in_channels: int, blocks: int, width: int = 256, min_width: int = 16) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        channels = in_channels
        for i in range(blocks):
            out = max(width >> i, min_width)
            layers += [
                nn.Upsample(scale_factor=2, mode="bilinear", align_corners=False),
                nn.Conv2d(channels, out, 3, padding=1, bias=False),
                nn.BatchNorm2d(out),
                nn.ReLU(inplace=True),
            ]
            channels = out
        self.blocks = nn.Sequential(*layers)
        self.head = nn.Conv2d(channels, 1, 1)

    def forward(self, features: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
        x = self.blocks(features)
        x = F.interpolate(x, size=size, mode="bilinear", align_corners=False)
        out: torch.Tensor = self.head(x)
        return out


class SaliencyAwareNet(nn.Module):
    """F-Net + C-Net (+ SPN when ``with_spn``); ``forward`` gives class logits.

    Args:
        features: The F-Net (see :func:`backbone_features`).
        feature_channels: Channels of its output map.
        num_classes: K.
        input_size: Side of the (square) input image.
        feature_size: Side of the F-Net's output map for that input.
        with_spn: Build the SPN (``False``: Fan et al.'s baseline without SPN).
        hidden: Units of C-Net's first layer (1024 in Fan et al.).
    """

    def __init__(
        self,
        features: nn.Module,
        feature_channels: int,
        num_classes: int,
        input_size: int,
        feature_size: int,
        *,
        with_spn: bool = True,
        hidden: int = 1024,
        dropout: float = 0.5,
    ) -> None:
        super().__init__()
        self.features = features
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Sequential(
            nn.Flatten(),
            nn.Linear(feature_channels, hidden),
            nn.ReLU(inplace=True),
            nn.Dropout(dropout),
            nn.Linear(hidden, num_classes),
        )
        self.spn = (
            SaliencyPredictionNet(feature_channels, spn_blocks(input_size, feature_size))
            if with_spn
            else None
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out: torch.Tensor = self.classifier(self.pool(self.features(x)))
        return out

    def forward_with_saliency(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Class logits ``(N, K)`` and SPN logits ``(N, 1, H, W)`` (``None`` without SPN), one pass."""
        f = self.features(x)
        logits = self.classifier(self.pool(f))
        sal = self.spn(f, (x.shape[-2], x.shape[-1])) if self.spn is not None else None
        return logits, sal

    def saliency(self, x: torch.Tensor) -> torch.Tensor:
        """The SPN map as probabilities in [0, 1], ``(N, H, W)``.

        Raises:
            ValueError: The network was built without an SPN.
        """
        if self.spn is None:
            raise InputError("this network was built without a saliency prediction net (baseline)")
        return torch.sigmoid(self.spn(self.features(x), (x.shape[-2], x.shape[-1])))[:, 0]


def build_saliency_net(
    backbone: nn.Module, num_classes: int, input_size: int = 224, *, with_spn: bool = True
) -> SaliencyAwareNet:
    """Wrap a classifier's backbone as F-Net and add C-Net and (optionally) SPN.

    The feature map's channels and side are measured with one dummy forward pass.
    """
    features = backbone_features(backbone)
    was = features.training
    features.eval()
    with torch.no_grad():
        fmap = features(torch.zeros(1, 3, input_size, input_size))
    features.train(was)
    if fmap.ndim != 4:
        raise InputError(f"the backbone's features have shape {tuple(fmap.shape)}, expected (N, C, h, w)")
    return SaliencyAwareNet(
        features, int(fmap.shape[1]), num_classes, input_size, int(fmap.shape[-1]), with_spn=with_spn
    )


def localisation_loss(
    saliency_logits: torch.Tensor, masks: torch.Tensor, has_mask: torch.Tensor, kind: str = "ce"
) -> torch.Tensor:
    """The SPN loss over the images that have a mask (Fan et al.'s semi-supervised rule).

    Args:
        saliency_logits: ``(N, 1, H, W)`` SPN output (logits).
        masks: ``(N, 1, H, W)`` or ``(N, H, W)`` ground truth in [0, 1] (any value where absent).
        has_mask: ``(N,)`` booleans: which images have a mask.
        kind: ``"ce"`` (pixel-wise binary cross-entropy), ``"l1"`` or ``"l2"`` (on probabilities).

    Returns:
        A scalar; exactly zero, with zero gradient, when no image in the batch has a mask.
    """
    if kind not in LOC_LOSSES:
        raise InputError(f"unknown localisation loss {kind!r}; expected one of {', '.join(LOC_LOSSES)}")
    if masks.ndim == 3:
        masks = masks[:, None]
    if masks.shape != saliency_logits.shape:
        raise InputError(
            f"mask shape {tuple(masks.shape)} does not match the SPN output {tuple(saliency_logits.shape)}"
        )
    keep = has_mask.to(torch.bool)
    if not bool(keep.any()):
        return saliency_logits.sum() * 0.0
    pred, target = saliency_logits[keep], masks[keep].to(saliency_logits.dtype)
    if kind == "ce":
        return F.binary_cross_entropy_with_logits(pred, target)
    diff = torch.sigmoid(pred) - target
    return diff.abs().mean() if kind == "l1" else (diff**2).mean()
