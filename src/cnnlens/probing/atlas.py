"""The layer atlas: one image's attributions at every selected layer, in network order.

One :class:`~cnnlens.attribution.methods.layer.LayerMethod` computes the channel attributions of all layers
from one batched forward and backward pass; each layer's map is the sum over its channels (as in the
seed study), upsampled to the input. The atlas saves one ``.npz`` per layer and draws all layers with
their names and output shapes (:func:`cnnlens.viz.layers.atlas_figure`).
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from cnnlens.attribution.core.base import ModelLike
from cnnlens.attribution.core.targets import Target
from cnnlens.attribution.methods.layer import (
    LayerGradCAM,
    LayerGradientShap,
    LayerGradXAct,
    LayerIntegratedGradients,
    LayerMethod,
    LayerSelection,
    select_layers,
)
from cnnlens.errors import InputError, unknown
from cnnlens.outputs import write_with
from cnnlens.probing.common import probing

#: The atlas's method names (``cnnlens layers --method``) and their classes.
ATLAS_METHODS: dict[str, type[LayerMethod]] = {
    "gradxact": LayerGradXAct,
    "ig": LayerIntegratedGradients,
    "gradshap": LayerGradientShap,
    "gradcam": LayerGradCAM,
}


@dataclass
class AtlasLayer:
    """One layer of a :class:`LayerAtlas`.

    Attributes:
        name: Dotted layer name.
        kind: Module type (``Conv2d``, ``Sequential``...).
        shape: Output shape ``(C, h, w)``.
        map: ``(h, w)`` sum of the channel attributions.
        upsampled: ``(H, W)`` map at the input resolution.
        channel_totals: ``(C,)`` each channel's attribution summed over space.
    """

    name: str
    kind: str
    shape: tuple[int, ...]
    map: torch.Tensor
    upsampled: torch.Tensor
    channel_totals: torch.Tensor


@dataclass
class LayerAtlas:
    """Attributions at every selected layer of a network for one image, in network order."""

    method: str
    target: int
    target_name: str
    score: float
    layers: list[AtlasLayer]
    seconds: float
    signed: bool
    params: dict[str, Any] = field(default_factory=dict)

    def names(self) -> list[str]:
        return [layer.name for layer in self.layers]

    def __getitem__(self, name: str) -> AtlasLayer:
        for layer in self.layers:
            if layer.name == name:
                return layer
        raise KeyError(f"layer {name!r} is not in the atlas; it has {', '.join(self.names())}")

    def summary(self) -> dict[str, Any]:
        """JSON-ready description: method, target and each layer's name, type, shape and total."""
        return {
            "method": self.method,
            "target": self.target,
            "target_name": self.target_name,
            "score": self.score,
            "seconds": self.seconds,
            "params": {k: v for k, v in self.params.items() if not isinstance(v, torch.Tensor)},
            "layers": [
                {
                    "index": i,
                    "name": layer.name,
                    "type": layer.kind,
                    "shape": list(layer.shape),
                    "total": float(layer.channel_totals.sum()),
                    "file": layer_file(i, layer.name),
                }
                for i, layer in enumerate(self.layers, 1)
            ],
        }

    def save(self, folder: str | os.PathLike[str]) -> list[Path]:
        """Write one ``.npz`` per layer (``map``, ``upsampled``, ``channel_totals``, ``layer``, ``type``,
        ``shape``, ``method``, ``target``, ``target_name``) into ``folder``; return the paths."""
        root = Path(folder)
        root.mkdir(parents=True, exist_ok=True)
        paths = []
        for i, layer in enumerate(self.layers, 1):
            path = root / layer_file(i, layer.name)
            arrays: dict[str, Any] = dict(
                map=layer.map.numpy().astype(np.float32),
                upsampled=layer.upsampled.numpy().astype(np.float32),
                channel_totals=layer.channel_totals.numpy().astype(np.float32),
                layer=np.asarray(layer.name),
                type=np.asarray(layer.kind),
                shape=np.asarray(layer.shape),
                method=np.asarray(self.method),
                target=np.asarray(self.target),
                target_name=np.asarray(self.target_name),
            )
            write_with(path, _savez(arrays))
            paths.append(path)
        return paths


def _savez(arrays: dict[str, Any]) -> Callable[[IO[bytes]], None]:
    """A writer for :func:`cnnlens.outputs.write_with` of ``arrays`` as a compressed ``.npz``."""
    return lambda f: np.savez_compressed(f, **arrays)


def layer_file(index: int, name: str) -> str:
    """File name of a layer's ``.npz``: ``03_features.5.npz`` (network order first)."""
    return f"{index:02d}_{re.sub(r'[^A-Za-z0-9._-]+', '_', name)}.npz"


def atlas_method(method: str | LayerMethod, model: ModelLike, **params: Any) -> LayerMethod:
    """The :class:`LayerMethod` of an atlas method name (gradxact, ig, gradshap or gradcam)."""
    if isinstance(method, LayerMethod):
        return method
    if method not in ATLAS_METHODS:
        raise unknown("atlas method", str(method), list(ATLAS_METHODS))
    return ATLAS_METHODS[method](model, **params)


def layer_atlas(
    model: ModelLike,
    inputs: torch.Tensor,
    target: Target = None,
    *,
    method: str | LayerMethod = "gradxact",
    layers: LayerSelection = None,
    batch_size: int = 32,
    **params: Any,
) -> LayerAtlas:
    """Attribute one image's target score to every selected layer, from one batched pass.

    Args:
        model: The classifier.
        inputs: One preprocessed image, ``(1, C, H, W)`` or ``(C, H, W)``.
        target: Class index or name (default: the top-1 class).
        method: ``gradxact``, ``ig``, ``gradshap``, ``gradcam`` or a :class:`LayerMethod` instance.
        layers: See :func:`select_layers` (default: stages of ResNet-style nets, else every conv).
        batch_size: Points per forward pass (the IG steps and GradientSHAP samples are batched).
        **params: The method's hyper-parameters (``steps``, ``n_samples``, ``baselines``, ``seed``...).

    Returns:
        A :class:`LayerAtlas` with the layers in the order the network runs them.

    Raises:
        ValueError: More than one image, a layer without a spatial output, bad parameters.
        UnknownNameError: Unknown method or layer name.
    """
    impl = atlas_method(method, model, **params)
    with probing(impl.model, inputs) as probe:
        x = probe.inputs
        if len(x) != 1:
            raise InputError(f"the layer atlas explains one image at a time, got a batch of {len(x)}")
        chosen = select_layers(probe.module, layers)
        attributions, targets, logits = impl.attribute_layers(
            x, lambda out: probe.targets(target, out), chosen, batch_size
        )
    layers_out = [_atlas_layer(n, chosen[n], a[0], impl, x.shape[-2:]) for n, a in attributions.items()]
    t = int(targets[0])
    return LayerAtlas(
        method=str(method) if isinstance(method, str) else impl.name,
        target=t,
        target_name=probe.target_name(t),
        score=float(logits.softmax(dim=1)[0, t]),
        layers=layers_out,
        seconds=probe.seconds(),
        signed=impl.signed,
        params=impl.get_params(),
    )


def _atlas_layer(
    name: str, layer: nn.Module, channels: torch.Tensor, impl: LayerMethod, size: torch.Size
) -> AtlasLayer:
    summed = impl.channel_sum(channels[None])
    up = F.interpolate(summed[:, None], size=tuple(size), mode="bilinear", align_corners=False)[0, 0]
    return AtlasLayer(
        name=name,
        kind=type(layer).__name__,
        shape=tuple(channels.shape),
        map=summed[0].float().cpu(),
        upsampled=up.float().cpu(),
        channel_totals=channels.sum(dim=(1, 2)).float().cpu(),
    )
