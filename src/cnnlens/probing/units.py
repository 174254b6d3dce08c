"""One layer's output for the unit tools: the forward pass stopped at the layer, and unit checks."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from cnnlens.errors import InputError
from cnnlens.models.hooks import capture_outputs
from cnnlens.validation import check_int


class _LayerReachedError(Exception):
    """Raised by the stop hook once the layer has run (never leaves :func:`layer_output`)."""


def _stop(_module: nn.Module, _args: Any, _out: Any) -> None:
    raise _LayerReachedError


def layer_output(network: nn.Module, name: str, layer: nn.Module, inputs: torch.Tensor) -> torch.Tensor:
    """The ``(N, K, h, w)`` output of ``layer`` for ``inputs``; the layers after it do not run.

    The output keeps its autograd graph (when the inputs or parameters need gradients).

    Raises:
        InputError: The layer did not run in the forward pass or does not output a feature map.
    """
    with capture_outputs({name: layer}) as store:
        handle = layer.register_forward_hook(_stop)
        try:
            network(inputs)
        except _LayerReachedError:
            pass
        finally:
            handle.remove()
    if name not in store:
        raise InputError(f"layer {name!r} does not run in the forward pass; choose one that does")
    out = store[name]
    if out.dim() != 4:
        raise InputError(
            f"layer {name!r} outputs shape {tuple(out.shape)}, not a (N, C, h, w) feature map; choose a "
            "convolutional layer or block (`cnnlens layers` lists them)"
        )
    return out


def final_rectifier(layer: nn.Module) -> nn.Module | None:
    """The ``nn.ReLU``/``nn.ReLU6`` that ends ``layer`` (the layer itself, or its last leaf module), if
    one does."""
    leaves = [m for m in layer.modules() if not list(m.children())]
    last = leaves[-1] if leaves else layer
    return last if isinstance(last, (nn.ReLU, nn.ReLU6)) else None


def pre_activation(
    network: nn.Module, layer: nn.Module, rectifier: nn.Module, inputs: torch.Tensor
) -> torch.Tensor:
    """The input of ``layer``'s final ``rectifier`` (its pre-activation) for ``inputs``; the layers
    after ``layer`` do not run."""
    store: list[torch.Tensor] = []

    def keep(_module: nn.Module, args: tuple[Any, ...]) -> None:
        store.append(args[0].clone())

    pre = rectifier.register_forward_pre_hook(keep)
    stop = layer.register_forward_hook(_stop)
    try:
        network(inputs)
    except _LayerReachedError:
        pass
    finally:
        pre.remove()
        stop.remove()
    if not store:
        raise InputError("the layer's rectifier did not run in the forward pass")
    return store[-1]


def check_unit(unit: int, units: int, layer: str) -> int:
    """Raise :class:`InputError` unless ``0 <= unit < units``."""
    unit = check_int("unit", unit)
    if not 0 <= unit < units:
        raise InputError(f"--unit {unit} is out of range: layer {layer!r} has {units} units (0-{units - 1})")
    return unit
