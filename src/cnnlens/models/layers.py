"""Addressing layers by the dotted names of ``named_modules()``."""

from __future__ import annotations

import re
from dataclasses import dataclass

import torch
from torch import nn

from cnnlens.errors import InputError, InputTypeError, unknown


def layer_names(model: nn.Module) -> list[str]:
    """Every addressable layer of ``model`` by dotted name, in definition order (the root excluded)."""
    return [name for name, _ in model.named_modules() if name]


def resolve_layer(model: nn.Module, layer: str | nn.Module) -> tuple[str, nn.Module]:
    """Find a layer of ``model`` by dotted name or by module object.

    Returns:
        The dotted name and the module.

    Raises:
        UnknownNameError: No layer has that name; the closest names are suggested.
        ValueError: The module given is not part of ``model``.
        TypeError: ``layer`` is neither a string nor a module.
    """
    modules = dict(model.named_modules())
    if isinstance(layer, str):
        if layer not in modules or not layer:
            raise unknown("layer", layer, layer_names(model), "List them with `cnnlens models --show MODEL`")
        return layer, modules[layer]
    if isinstance(layer, nn.Module):
        for name, module in modules.items():
            if module is layer:
                return name, module
        raise InputError(f"the module {type(layer).__name__} given as layer is not part of the model")
    raise InputTypeError(f"layer must be a dotted name or an nn.Module, got {type(layer).__name__}")


@dataclass(frozen=True)
class LayerInfo:
    """One layer as seen in a forward pass: its name, type, output shape and parameter count."""

    name: str
    kind: str
    output_shape: tuple[int, ...] | None
    parameters: int


def trace_layers(model: nn.Module, input_size: tuple[int, int], channels: int = 3) -> list[LayerInfo]:
    """Run one dummy forward pass and report each layer's output shape, in execution order.

    Layers that did not run (or ran with non-tensor outputs) are listed after, without a shape.
    The model's mode and hooks are left as they were.
    """
    shapes: dict[str, tuple[int, ...]] = {}
    order: list[str] = []
    handles = []

    def make(name: str):  # type: ignore[no-untyped-def]
        def hook(_m: nn.Module, _i: object, out: object) -> None:
            if isinstance(out, torch.Tensor):
                shapes[name] = tuple(out.shape[1:])
                if name not in order:
                    order.append(name)

        return hook

    named = [(n, m) for n, m in model.named_modules() if n]
    was_training = [(m, m.training) for m in model.modules()]
    try:
        for n, m in named:
            handles.append(m.register_forward_hook(make(n)))
        model.eval()
        param = next(model.parameters(), None)
        device = param.device if param is not None else torch.device("cpu")
        with torch.inference_mode():
            model(torch.zeros(1, channels, *input_size, device=device))
    finally:
        for h in handles:
            h.remove()
        for m, t in was_training:
            m.training = t
    modules = dict(named)
    names = order + [n for n, _ in named if n not in shapes]
    return [
        LayerInfo(
            name=n,
            kind=type(modules[n]).__name__,
            output_shape=shapes.get(n),
            parameters=sum(p.numel() for p in modules[n].parameters()),
        )
        for n in names
    ]


#: The first norm of a transformer block (timm's ViT, DeiT, BEiT, EVA: ``blocks.11.norm1``).
_TOKEN_NORM = re.compile(r"^(.*\.)?blocks\.\d+\.norm1$")


def default_cam_layer(model: nn.Module, input_size: tuple[int, int], channels: int = 3) -> str | None:
    """The last layer, in execution order, that outputs a spatial feature map (N, C, H, W with H, W > 1).

    Adaptive pooling layers are passed over: they only resample the last feature map (VGG's
    ``avgpool`` turns 7x7 into 7x7, or a smaller input's map into 7x7). For ResNets this is
    ``layer4``, for VGG ``features``, for EfficientNets the final conv block: the map Grad-CAM and CAM
    are usually computed on.

    A vision transformer (blocks of ``(N, T, C)`` tokens) gets the first norm of its last block
    (``blocks.11.norm1``), whose patch tokens the CAM methods read as a grid
    (:mod:`cnnlens.models.tokens`): the last block's output reaches a class-token head only through
    its class token, so its patch tokens have no gradient, while at ``norm1`` they still feed the
    last attention (docs/decisions.md, issue 20).
    """
    best: str | None = None
    table = trace_layers(model, input_size, channels)
    tokens = [
        i.name for i in table if _TOKEN_NORM.match(i.name) and i.output_shape and len(i.output_shape) == 2
    ]
    if tokens:
        return tokens[-1]
    for info in table:
        shape = info.output_shape
        if info.kind.startswith("Adaptive"):
            continue
        if shape is not None and len(shape) == 3 and shape[1] > 1 and shape[2] > 1:
            best = info.name
    return best
