"""What the ``cnnlens probe`` tools share: their DATA / layer / output arguments, reading the dataset,
streaming it with a progress bar, turning preprocessed images back into pictures, and writing a tool's
section of ``OUT/index.html``."""

from __future__ import annotations

import argparse
import io
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from cnnlens.cli.common import check_feature_map_layer, console, progress_bar, split_list
from cnnlens.data.folders import ImageSet, read_data
from cnnlens.data.stream import Batch, stream_batches
from cnnlens.errors import InputError
from cnnlens.models.loaded import LoadedModel
from cnnlens.outputs import check_output_folder, output_folder, subfolder, write_json, write_with
from cnnlens.report.sections import Section, render_sections, write_section
from cnnlens.validation import check_positive_int

if TYPE_CHECKING:
    from matplotlib.figure import Figure

PAGE_TITLE = "cnnlens probe: what the layers have learned"


def add_out_argument(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "-o",
        "--out",
        required=True,
        type=Path,
        help="output folder (the tool writes OUT/<tool>/ and OUT/index.html)",
    )


def add_data_arguments(p: argparse.ArgumentParser) -> None:
    """DATA, ``--split``, ``--batch-size``, ``--limit``, ``--workers``."""
    p.add_argument(
        "data",
        metavar="DATA",
        help="class folders, a CSV manifest, a `cnnlens data` export or a folder of images",
    )
    p.add_argument("--split", choices=("train", "val", "test"), help="only this split of a manifest")
    p.add_argument("--batch-size", type=int, default=64, help="images per forward pass (default 64)")
    p.add_argument("--limit", type=int, help="use only the first N images")
    p.add_argument(
        "--workers", type=int, help="decoding processes (default: 0 below 64 images, else up to 4)"
    )


def read_samples(args: argparse.Namespace) -> ImageSet:
    """The dataset DATA names, cut to ``--limit``: a folder with subfolders is read as class folders
    (labels from the folder names), a folder with ``images/`` or only image files as unlabelled."""
    check_positive_int("--batch-size", args.batch_size)
    if args.limit is not None:
        check_positive_int("--limit", args.limit)
    path = Path(args.data)
    classes = path.is_dir() and not (path / "images").is_dir() and any(p.is_dir() for p in path.iterdir())
    data = read_data(path, labelled=classes, split=args.split)
    if args.limit is not None:
        data.samples = data.samples[: args.limit]
    if not data.samples:
        raise InputError(f"{args.data}: no images to probe")
    return data


def check_layer(model: LoadedModel, layer: str, maps: bool = True) -> str:
    """The layer's dotted name, checked (one dummy pass) before the data pass starts."""
    if maps:
        check_feature_map_layer(model, layer)
    name, _ = model.layer(layer)
    return name


def layer_channels(model: LoadedModel, name: str) -> int:
    """Channels of a layer's output (from the model's layer table: one dummy pass, cached)."""
    shape = {info.name: info.output_shape for info in model.layer_table}.get(name)
    if not shape:
        raise InputError(f"--layer {name}: the layer does not run in the forward pass")
    return int(shape[0])


@contextmanager
def data_pass(
    model: LoadedModel, data: ImageSet, args: argparse.Namespace, what: str
) -> Iterator[tuple[Callable[[], Iterator[Batch]], Callable[[int], None]]]:
    """``(batches, progress)`` for one pass over ``data`` with a progress bar (i/N, rate, ETA)."""
    with progress_bar(what, len(data.samples)) as advance:

        def batches() -> Iterator[Batch]:
            return stream_batches(
                data.samples, model.preprocessing, batch_size=args.batch_size, workers=args.workers
            )

        def progress(n: int) -> None:
            advance(n=n)

        yield batches, progress


def fetch_images(
    model: LoadedModel, data: ImageSet, args: argparse.Namespace
) -> Callable[[Sequence[int]], Iterator[Batch]]:
    """Batches of the dataset images at given indices (for a second pass over a few winners)."""

    def fetch(order: Sequence[int]) -> Iterator[Batch]:
        return stream_batches(
            data.samples, model.preprocessing, batch_size=args.batch_size, workers=0, order=order
        )

    return fetch


def pictures(model: LoadedModel, x: torch.Tensor) -> np.ndarray:
    """Preprocessed ``(C, H, W)`` or ``(N, C, H, W)`` images as ``(..., H, W, 3)`` uint8 pictures."""
    rgb = model.preprocessing.denormalize(x.float().cpu())
    if rgb.shape[-3] == 1:
        rgb = rgb.expand(*rgb.shape[:-3], 3, *rgb.shape[-2:])
    return (rgb * 255).round().to(torch.uint8).movedim(-3, -1).numpy()


def png_data_uri(picture: np.ndarray) -> str:
    """A ``(H, W, 3)`` uint8 picture as a ``data:image/png`` URI."""
    import base64

    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(picture).save(buf, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode("ascii")


def parse_units(values: list[str] | None) -> list[int] | None:
    """``--units 0,3 --units 7`` -> ``[0, 3, 7]``; ranges ``2-5`` allowed; ``None`` when not given."""
    names = split_list(values)
    if not names:
        return None
    units: list[int] = []
    for v in names:
        lo, sep, hi = v.partition("-")
        try:
            units += list(range(int(lo), int(hi) + 1)) if sep else [int(v)]
        except ValueError:
            raise InputError(f"--units expects channel indices like 0,3,7 or 2-5, got {v!r}") from None
    return units


def save_png(folder: Path, name: str, fig: Figure, dpi: int = 120) -> Path:
    """``fig`` as ``folder/name`` (PNG, written atomically)."""
    return write_with(folder / name, lambda f: fig.savefig(f, format="png", dpi=dpi))


def publish(out: Path, section: Section) -> Path:
    """Write the tool's section and (re)render ``OUT/index.html``; return the page's path."""
    write_section(out, section)
    return render_sections(out, PAGE_TITLE)


class ToolOutput:
    """Where one tool writes: ``OUT/<key>/`` for its files, then its section and the page."""

    def __init__(self, out: Path, key: str) -> None:
        check_output_folder(out)
        self.out, self.key = out, key

    @property
    def folder(self) -> Path:
        return subfolder(output_folder(self.out), self.key)

    def figure(self, name: str, fig: Figure, dpi: int = 120) -> str:
        save_png(self.folder, name, fig, dpi)
        return name

    def json(self, name: str, obj: Any) -> Path:
        return write_json(self.folder / name, obj)

    def section(self, section: Section) -> Path:
        """Write the section and (re)render ``OUT/index.html``; return the page's path."""
        page = publish(self.out, section)
        console.print(f"wrote {self.out / self.key}/ and {page}")
        return page
