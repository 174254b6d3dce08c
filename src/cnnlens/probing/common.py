"""The set-up every probing tool shares with :meth:`~cnnlens.attribution.Attribution.explain`.

The layer atlas, channel Shapley values, channel patches and mean activations run the network on
preprocessed images as an attribution method does: the images are checked against the model's first
convolution (:func:`~cnnlens.attribution.core.base.check_inputs`), detached and moved to the model's
device; for the block the model is in eval mode with its parameters frozen and is restored afterwards
(:func:`~cnnlens.models.hooks.preserved_state`), and timm's same-padding convolutions run padding-free
(:func:`~cnnlens.attribution.engine.padding.same_padding_in_conv`). :func:`probing` does that once and
yields a :class:`Probe`, which also resolves the layer and the targets.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import torch
from torch import nn

from cnnlens.attribution.core.base import ModelLike, check_inputs, first_conv_channels
from cnnlens.attribution.core.targets import Target, resolve_targets
from cnnlens.attribution.engine.padding import same_padding_in_conv
from cnnlens.errors import InputError
from cnnlens.models.hooks import preserved_state
from cnnlens.models.layers import resolve_layer
from cnnlens.models.loaded import LoadedModel


@dataclass(frozen=True)
class Probe:
    """A model and its images, ready for one probing pass (made by :func:`probing`).

    Attributes:
        model: What the tool was given (a :class:`LoadedModel` knows its class names and CAM layer).
        module: The network.
        inputs: ``(N, C, H, W)`` the checked images, detached, on the model's device.
        started: :func:`time.perf_counter` when the images were ready.
    """

    model: ModelLike
    module: nn.Module
    inputs: torch.Tensor
    started: float

    @property
    def class_names(self) -> list[str] | None:
        return self.model.class_names if isinstance(self.model, LoadedModel) else None

    def layer(self, layer: str | nn.Module | None) -> tuple[str, nn.Module]:
        """The dotted name and module of ``layer``; ``None``: a :class:`LoadedModel`'s CAM layer.

        Raises:
            UnknownNameError: No layer has that name (the closest are suggested).
            ValueError: ``None`` for a plain ``nn.Module``, or a module that is not part of the model.
        """
        if layer is None:
            if not isinstance(self.model, LoadedModel):
                raise InputError("give layer= (a dotted name) for a plain nn.Module")
            return self.model.layer(None)
        return resolve_layer(self.module, layer)

    def targets(self, target: Target, logits: torch.Tensor) -> torch.Tensor:
        """One class index per image (``None``: the top-1 class of ``logits``; :func:`resolve_targets`)."""
        return resolve_targets(target, logits, self.class_names)

    def target_name(self, target: int) -> str:
        return self.class_names[target] if self.class_names else str(target)

    def seconds(self) -> float:
        """Time since the images were ready."""
        return time.perf_counter() - self.started


@contextmanager
def probing(model: ModelLike, inputs: torch.Tensor) -> Iterator[Probe]:
    """Check ``inputs``, move them to the model's device and hold the model in its probing state.

    Args:
        model: The classifier.
        inputs: ``(N, C, H, W)`` or ``(C, H, W)`` preprocessed images.

    Yields:
        The :class:`Probe`; the model's train/eval mode and ``requires_grad`` flags are restored on
        exit, whatever happened inside.

    Raises:
        TypeError, ValueError: Inputs that are not a finite float image batch the model can take.
    """
    module = model.module if isinstance(model, LoadedModel) else model
    x = check_inputs(inputs, first_conv_channels(module))
    param = next(module.parameters(), None)
    x = x.detach().to(param.device if param is not None else x.device)
    with preserved_state(module, freeze_parameters=True), same_padding_in_conv(module):
        yield Probe(model, module, x, time.perf_counter())
