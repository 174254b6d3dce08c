"""Small helpers of the unit tools (``dissect``, ``visualize``, ``deconv``): unit lists, layer checks,
figure files and the page."""

from __future__ import annotations

from typing import TYPE_CHECKING

from cnnlens.cli.probe.common import add_out_argument as add_out
from cnnlens.cli.probe.common import check_layer, layer_channels, publish, save_png
from cnnlens.cli.probe.common import parse_units as parse_unit_list
from cnnlens.errors import InputError
from cnnlens.models.loaded import LoadedModel

if TYPE_CHECKING:
    pass

__all__ = ["add_out", "feature_layer", "parse_units", "publish", "save_png"]


def feature_layer(model: LoadedModel, layer: str) -> tuple[str, int]:
    """The dotted name and the unit (channel) count of ``layer``, which must output ``(N, C, h, w)``."""
    name = check_layer(model, layer)
    return name, layer_channels(model, name)


def parse_units(text: str, units: int, layer: str) -> list[int]:
    """``"3"``, ``"3,7"`` or ``"0-5"`` as unit indices, each checked against the layer's ``units``."""
    out = parse_unit_list([text])
    if not out:
        raise InputError(f"--unit expects indices like 3, 3,7 or 0-5, got {text!r}")
    for u in out:
        if not 0 <= u < units:
            raise InputError(f"--unit {u} is out of range: layer {layer!r} has {units} units (0-{units - 1})")
    return out
