"""Small helpers of the unit tools (``dissect``, ``visualize``, ``deconv``): unit lists, layer checks,
figure files and the page."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from cnnlens.cli.probe.common import PAGE_TITLE, check_layer, layer_channels
from cnnlens.cli.probe.common import add_out_argument as add_out
from cnnlens.cli.probe.common import parse_units as parse_unit_list
from cnnlens.errors import InputError
from cnnlens.models.loaded import LoadedModel
from cnnlens.outputs import subfolder, write_with
from cnnlens.report.sections import Section, render_sections, write_section

if TYPE_CHECKING:
    from matplotlib.figure import Figure

__all__ = ["add_out", "feature_layer", "parse_units", "publish", "save_png", "tool_folder"]


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


def save_png(folder: Path, name: str, fig: Figure, dpi: int = 110) -> Path:
    return write_with(folder / name, lambda f: fig.savefig(f, format="png", dpi=dpi))


def publish(out: Path, section: Section) -> Path:
    """Write the tool's section and (re)build ``OUT/index.html``; return the page."""
    write_section(out, section)
    return render_sections(out, PAGE_TITLE)


def tool_folder(out: Path, key: str) -> Path:
    return subfolder(out, key)
