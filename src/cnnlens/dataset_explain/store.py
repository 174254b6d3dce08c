"""The on-disk store of ``cnnlens explain-dataset``: zarr arrays for the maps, Parquet for the table.

Layout of ``STORE/``::

    settings.json          what the run was asked (model and its weights' checksum, methods and
                           their parameters, data, split, dtype, target, batch size); a rerun must match
    maps.zarr/<method>     (N, H, W) maps, one zarr chunk per batch, NaN rows for unreadable images
    maps.zarr/class_mean/<method>   (K, H, W) mean map per class (written at the end)
    parts/batch-NNNNNN.parquet      the table rows of one batch; its presence marks the batch done
    table.parquet          every image's row (merged from the parts at the end), sorted by ``index``
    class_summary.parquet  per-class numbers (written at the end)
    summary.json           ``complete``, counts, the per-class table, file names (written last)

A batch is written in this order: its maps (into chunks no other batch touches), then its part file
(atomically: written aside, then renamed). A run killed at any moment leaves every batch either
done (part present, maps complete) or not done (no part; its chunks, possibly half written, are
rewritten by the rerun), so a rerun of the same command explains exactly the missing batches, with
the same batch composition, and ends with the same bytes as an uninterrupted run.
"""

from __future__ import annotations

import json
import logging
import math
import shutil
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import torch
import zarr

from cnnlens.dataset_explain.summaries import MAP_NUMBERS
from cnnlens.errors import CnnlensError, InputError
from cnnlens.outputs import LOCK_FILE, output_folder, write_json, write_with

log = logging.getLogger(__name__)

SETTINGS = "settings.json"
MAPS = "maps.zarr"
PARTS = "parts"
TABLE = "table.parquet"
CLASS_SUMMARY = "class_summary.parquet"
SUMMARY = "summary.json"
#: The store's section of ``STORE/index.html`` (written by the command line).
SECTION = "explain-dataset"
#: Everything a store owns (``--force`` removes these and nothing else).
OWNED = (SETTINGS, MAPS, PARTS, TABLE, CLASS_SUMMARY, SUMMARY, SECTION, "index.html")
DTYPES = ("float16", "float32")


def table_schema(methods: Sequence[str]) -> pa.Schema:
    """The columns of the table (and of every part file)."""
    fields = [
        pa.field("index", pa.int64()),
        pa.field("path", pa.string()),
        pa.field("label", pa.int64()),
        pa.field("label_name", pa.string()),
        pa.field("prediction", pa.int64()),
        pa.field("prediction_name", pa.string()),
        pa.field("target", pa.int64()),
        pa.field("target_name", pa.string()),
        pa.field("score", pa.float64()),
        pa.field("has_mask", pa.bool_()),
        pa.field("error", pa.string()),
    ]
    fields += [pa.field(f"{m}_{n}", pa.float64()) for m in methods for n in MAP_NUMBERS]
    return pa.schema(fields)


def _plain(obj: Any) -> Any:
    """``obj`` as it reads back from JSON (tuples become lists, unknown objects strings)."""
    return json.loads(json.dumps(obj, default=str))


@dataclass(frozen=True)
class Layout:
    """The shape of a store: images, map size, batch size, methods, classes, dtype."""

    count: int
    height: int
    width: int
    batch_size: int
    methods: tuple[str, ...]
    class_names: tuple[str, ...]
    dtype: str

    @property
    def batches(self) -> int:
        return math.ceil(self.count / self.batch_size)

    def rows(self, batch: int) -> range:
        """The image positions of ``batch``."""
        return range(batch * self.batch_size, min(self.count, (batch + 1) * self.batch_size))


class Store:
    """A store folder (see the module doc). Use :meth:`open`, then :meth:`write_batch` and
    :meth:`finish`."""

    def __init__(self, root: Path, layout: Layout, settings: dict[str, Any]):
        self.root = root
        self.layout = layout
        self.settings = settings
        self.schema = table_schema(layout.methods)
        self.group = zarr.open_group(str(root / MAPS), mode="a")

    # -- opening -----------------------------------------------------------------------------------

    @classmethod
    def open(
        cls, root: str | Path, layout: Layout, settings: dict[str, Any], *, force: bool = False
    ) -> Store:
        """Create the store, or reopen the one ``root`` holds when it was made with the same
        ``settings`` (a different one is refused unless ``force``, which replaces it).

        Raises:
            InputError: ``root`` holds something else, or a store made with other settings.
        """
        folder = Path(root)
        settings = _plain({**settings, "layout": layout.__dict__})
        if folder.is_dir() and any(p.name != LOCK_FILE for p in folder.iterdir()):  # the run's own lock
            old = read_settings(folder)
            if old is None:
                foreign = sorted(p.name for p in folder.iterdir() if p.name not in (*OWNED, LOCK_FILE))
                shown = ", ".join(foreign[:3]) + ("..." if len(foreign) > 3 else "")
                raise InputError(
                    f"--out {folder} is not an explain-dataset store (it holds {shown or 'files'}); "
                    "give a new or empty folder"
                )
            if old != settings:
                if not force:
                    diff = sorted(k for k in set(old) | set(settings) if old.get(k) != settings.get(k))
                    raise InputError(
                        f"--out {folder} was made with other settings (its {', '.join(diff)} "
                        f"{'differs' if len(diff) == 1 else 'differ'}); "
                        "rerun with the same ones to resume, give a new folder, or add --force to replace it"
                    )
                log.warning("--force: replacing the store in %s", folder)
                remove_store(folder)
        output_folder(folder)
        if read_settings(folder) is None:  # claims the folder before anything else is written
            write_json(folder / SETTINGS, settings, indent=1)
        store = cls(folder, layout, settings)
        store._arrays()
        (folder / PARTS).mkdir(exist_ok=True)
        return store

    def _arrays(self) -> None:
        lay = self.layout
        for m in lay.methods:
            existing = self.group.get(m)
            shape = (lay.count, lay.height, lay.width)
            if (
                isinstance(existing, zarr.Array)
                and existing.shape == shape
                and existing.dtype == np.dtype(lay.dtype)
                and existing.chunks == (lay.batch_size, lay.height, lay.width)
            ):
                continue
            self.group.create_array(
                m,
                shape=shape,
                chunks=(lay.batch_size, lay.height, lay.width),
                dtype=lay.dtype,
                fill_value=np.nan,
                dimension_names=("image", "y", "x"),
                overwrite=True,
            )
        self.group.attrs.update({"methods": list(lay.methods), "class_names": list(lay.class_names)})

    # -- progress ----------------------------------------------------------------------------------

    def part(self, batch: int) -> Path:
        return self.root / PARTS / f"batch-{batch:06d}.parquet"

    def done(self) -> set[int]:
        """The batches whose part file is there (their maps were written before it)."""
        return {b for b in range(self.layout.batches) if self.part(b).is_file()}

    def todo(self) -> list[int]:
        done = self.done()
        return [b for b in range(self.layout.batches) if b not in done]

    def is_complete(self) -> bool:
        summary = read_json(self.root / SUMMARY)
        return bool(summary and summary.get("complete")) and (self.root / TABLE).is_file()

    # -- writing -----------------------------------------------------------------------------------

    def write_batch(self, batch: int, rows: list[dict[str, Any]], maps: dict[str, np.ndarray]) -> None:
        """Write one batch: ``rows`` (one per image of the batch, failed ones included, in any
        order) and ``maps[method]`` (``(len(rows), H, W)``, in the order of ``rows``)."""
        span = self.layout.rows(batch)
        order = np.argsort([r["index"] for r in rows])
        rows = [rows[i] for i in order]
        if [r["index"] for r in rows] != list(span):
            raise CnnlensError(f"batch {batch}: got rows {[r['index'] for r in rows]}, expected {list(span)}")
        for m in self.layout.methods:
            chunk = cast(np.asarray(maps[m])[order], self.layout.dtype)
            self.group[m][span.start : span.stop] = chunk  # type: ignore[index]
        table = pa.Table.from_pylist(rows, schema=self.schema)
        write_with(self.part(batch), lambda f: pq.write_table(table, f))

    def finish(self) -> dict[str, Any]:
        """Merge the parts into the table, compute the per-class aggregates, write the summary."""
        todo = self.todo()
        if todo:
            raise CnnlensError(f"{len(todo)} batches are not done yet (first: {todo[0]})")
        table = pa.concat_tables(
            [pq.read_table(self.part(b), schema=self.schema) for b in range(self.layout.batches)]
        ).sort_by("index")
        if table.column("index").to_pylist() != list(range(self.layout.count)):
            raise CnnlensError(f"{self.root}: the parts do not hold every image exactly once")
        write_with(self.root / TABLE, lambda f: pq.write_table(table, f))
        per_class = self._class_means(table)
        write_with(self.root / CLASS_SUMMARY, lambda f: pq.write_table(per_class, f))
        summary = {
            "complete": True,
            "images": self.layout.count,
            "explained": int(sum(e is None for e in table.column("error").to_pylist())),
            "failed": [
                {"index": r["index"], "path": r["path"], "error": r["error"]}
                for r in table.filter(pc.invert(pc.is_null(table.column("error")))).to_pylist()
            ],
            "methods": list(self.layout.methods),
            "class_names": list(self.layout.class_names),
            "dtype": self.layout.dtype,
            "files": {"maps": MAPS, "table": TABLE, "class_summary": CLASS_SUMMARY, "settings": SETTINGS},
            "class_summary": per_class.to_pylist(),
            "settings": self.settings,
        }
        write_json(self.root / SUMMARY, summary, indent=1, default=str)
        return summary

    def _class_means(self, table: pa.Table) -> pa.Table:
        """Mean map per class and method into ``maps.zarr/class_mean``; the per-class table.

        An image's class is its label; the accuracy compares class names (the model's prediction
        and the dataset's label), so a model trained on other classes scores 0, not nonsense."""
        lay = self.layout
        classes = np.array(table.column("label").to_pylist())
        ok = np.array([e is None for e in table.column("error").to_pylist()])
        k = len(lay.class_names)
        sums = {m: np.zeros((k, lay.height, lay.width)) for m in lay.methods}
        counts = np.zeros(k, dtype=np.int64)
        for b in range(lay.batches):
            span = lay.rows(b)
            cls = classes[span.start : span.stop]
            good = ok[span.start : span.stop] & (cls >= 0)
            np.add.at(counts, cls[good], 1)
            for m in lay.methods:
                chunk = np.asarray(self.group[m][span.start : span.stop], dtype=np.float64)  # type: ignore[index]
                for i in np.flatnonzero(good):  # in order, as np.add.at adds (30x faster on whole maps)
                    sums[m][cls[i]] += chunk[i]
        means = self.group.require_group("class_mean")
        for m in lay.methods:
            with np.errstate(invalid="ignore", divide="ignore"):
                mean = (sums[m] / counts[:, None, None]).astype(np.float32)
            arr = means.create_array(
                m,
                shape=mean.shape,
                chunks=mean.shape,
                dtype="float32",
                fill_value=np.nan,
                dimension_names=("class", "y", "x"),
                overwrite=True,
            )
            arr[...] = mean
        means.create_array("count", shape=(k,), dtype="int64", dimension_names=("class",), overwrite=True)[
            ...
        ] = counts
        means.attrs["class_names"] = list(lay.class_names)
        rows = []
        frame = table.to_pydict()
        pred_names = np.array(frame["prediction_name"], dtype=object)
        label_names = np.array(frame["label_name"], dtype=object)
        for c in range(k):
            sel = (classes == c) & ok
            row: dict[str, Any] = {
                "class": c,
                "class_name": lay.class_names[c],
                "images": int(sel.sum()),
                "accuracy": _mean((pred_names[sel] == label_names[sel]).astype(float)),
                "mean_score": _mean(np.array(frame["score"], dtype=float)[sel]),
            }
            for m in lay.methods:
                for n in MAP_NUMBERS:
                    row[f"{m}_{n}"] = _mean(np.array(frame[f"{m}_{n}"], dtype=float)[sel])
            rows.append(row)
        return pa.Table.from_pylist(rows)


def cast(maps: np.ndarray, dtype: str) -> np.ndarray:
    """``maps`` as ``dtype``, the same bits as ``maps.astype(dtype)``. float32 to float16 goes through
    torch's vectorised conversion (both round to nearest even): NumPy converts one value at a time,
    ~6 ms per 224 px map when the values are tiny (1e-10: random weights) against ~0.02 ms."""
    if maps.dtype == np.float32 and dtype == "float16":
        return torch.from_numpy(np.ascontiguousarray(maps)).to(torch.float16).numpy()
    return maps.astype(dtype)


def _mean(values: np.ndarray) -> float | None:
    values = values[np.isfinite(values)]
    return float(values.mean()) if values.size else None


def read_json(path: Path) -> dict[str, Any] | None:
    if path.is_symlink() or not path.is_file():
        return None
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        return None
    return data if isinstance(data, dict) else None


def read_settings(folder: Path) -> dict[str, Any] | None:
    """The settings a store was made with, or ``None`` when ``folder`` holds no store."""
    return read_json(folder / SETTINGS)


def remove_store(folder: Path) -> None:
    """Remove what a store owns in ``folder`` (:data:`OWNED`), nothing else."""
    for name in OWNED:
        path = folder / name
        if path.is_symlink() or path.is_file():
            path.unlink()
        elif path.is_dir():
            shutil.rmtree(path)
