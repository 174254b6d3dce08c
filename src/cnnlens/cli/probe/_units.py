"""Small helpers of the unit tools (``dissect``, ``visualize``, ``deconv``): unit lists, layer checks,
figure files and the page."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import TYPE_CHECKING

from cnnlens.cli.common import check_feature_map_layer
from cnnlens.errors import InputError
from cnnlens.models.loaded import LoadedModel
from cnnlens.outputs import subfolder, write_with
from cnnlens.report.sections import Section, render_sections, write_section

if TYPE_CHECKING:
    from matplotlib.figure import Figure

#: Title of the page ``OUT/index.html`` the probe tools add their sections to.
PAGE_TITLE = "cnnlens probe"


def add_out(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "-o", "--out", required=True, type=Path, help="output folder (OUT/<tool>/ and OUT/index.html)"
    )


def feature_layer(model: LoadedModel, layer: str) -> tuple[str, int]:
    """The dotted name and the unit (channel) count of ``layer``, which must output ``(N, C, h, w)``."""
    check_feature_map_layer(model, layer)
    name, _ = model.layer(layer)
    info = {i.name: i.output_shape for i in model.layer_table}
    shape = info[name]
    assert shape is not None  # check_feature_map_layer made sure
    return name, int(shape[0])


def parse_units(text: str, units: int, layer: str) -> list[int]:
    """``"3"``, ``"3,7"`` or ``"0-5"`` as unit indices, each checked against the layer's ``units``."""
    out: list[int] = []
    for part in (p.strip() for p in text.split(",") if p.strip()):
        lo, sep, hi = part.partition("-")
        try:
            values = list(range(int(lo), int(hi) + 1)) if sep and lo else [int(part)]
        except ValueError:
            raise InputError(f"--unit expects indices like 3, 3,7 or 0-5, got {text!r}") from None
        out += values
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
