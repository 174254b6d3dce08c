"""The :class:`LoadedModel`: a network together with everything needed to explain it."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from functools import cached_property

import torch
from PIL import Image
from torch import nn

from cnnlens.data.transforms import Preprocessing
from cnnlens.errors import InputError
from cnnlens.models.layers import LayerInfo, layer_names, resolve_layer, trace_layers


@dataclass
class LoadedModel:
    """A classifier and what it carries: preprocessing, class names, default CAM layer, provenance.

    Attributes:
        module: The ``nn.Module`` (in eval mode when loaded).
        name: The registry name or checkpoint path it was loaded from.
        arch: The architecture name (``"resnet50"``, ``"tf_efficientnet_lite0"``...).
        class_names: One name per output.
        preprocessing: Resize, crop and normalisation the model expects.
        default_layer: Dotted name of the layer CAM methods use when none is given.
        source: Where the weights came from, in words.
        head: The head kind (``"original"``, ``"linear"``, ``"mlp64"``).
    """

    module: nn.Module
    name: str
    arch: str
    class_names: list[str]
    preprocessing: Preprocessing
    default_layer: str | None
    source: str
    head: str = "original"
    arch_source: str = "torchvision"
    meta: dict[str, object] = field(default_factory=dict)

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    @property
    def device(self) -> torch.device:
        p = next(self.module.parameters(), None)
        return p.device if p is not None else torch.device("cpu")

    def layers(self) -> list[str]:
        """Every layer's dotted name."""
        return layer_names(self.module)

    @cached_property
    def layer_table(self) -> list[LayerInfo]:
        """Each layer with its type, output shape and parameter count (one dummy forward pass)."""
        p = self.preprocessing
        return trace_layers(self.module, p.input_size, p.channels)

    def layer(self, layer: str | nn.Module | None = None) -> tuple[str, nn.Module]:
        """Resolve a layer (``None``: the default CAM layer)."""
        if layer is None:
            if self.default_layer is None:
                raise InputError(f"model {self.name!r} has no default layer; pass a layer name")
            layer = self.default_layer
        return resolve_layer(self.module, layer)

    def prepare(self, images: Image.Image | Sequence[Image.Image]) -> torch.Tensor:
        """Preprocess one image or several into an ``(N, C, H, W)`` batch on the model's device."""
        items = [images] if isinstance(images, Image.Image) else list(images)
        return self.preprocessing.batch(items).to(self.device)

    def logits(self, inputs: torch.Tensor, batch_size: int = 64) -> torch.Tensor:
        """Model outputs for a batch, without gradients, in eval mode (the mode is restored)."""
        from cnnlens.models.hooks import preserved_state

        with preserved_state(self.module, freeze_parameters=False), torch.inference_mode():
            chunks = [
                self.module(inputs[i : i + batch_size].to(self.device)).float()
                for i in range(0, len(inputs), batch_size)
            ]
        return torch.cat(chunks).cpu()

    def top_k(self, inputs: torch.Tensor, k: int = 5) -> list[list[tuple[int, str, float]]]:
        """The ``k`` most probable classes of each input as ``(index, name, probability)``."""
        probs = self.logits(inputs).softmax(dim=1)
        values, indices = probs.topk(min(k, probs.shape[1]), dim=1)
        return [
            [(int(i), self.class_names[int(i)], float(v)) for v, i in zip(vs, ids)]
            for vs, ids in zip(values, indices)
        ]
