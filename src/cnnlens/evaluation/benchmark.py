"""The benchmark: every method (plus two reference maps) x every metric over a set of images.

Data (see :func:`load_dataset`): ``"samples"`` (the shipped photos with their hand-drawn object
polygons); a folder ``DIR/images/`` searched recursively (class subfolders are fine) with optional
masks ``DIR/masks/<name>.<ext>`` matched by file stem (any non-zero mask pixel is the object); or a
CSV manifest with the columns ``path,label[,mask][,split]`` (what ``cnnlens data synth`` writes),
optionally filtered to one split. A folder without ``images/`` is read as images only. Images without
a usable mask get NaN for the localisation metrics.

Attributions are cached on disk (``.npz`` keyed by model, method, parameters, input and target), so a
re-run with a new metric does not recompute them. Results are appended to ``results.jsonl`` one
(image, row) at a time, in one write, so an interrupted run resumes where it stopped. Each result is
keyed by what produced it: the model (a hash of its parameters), the preprocessed input, the target,
the mask (for the metrics that use one), the method's and the metric's parameters. A run with another
model, other images or other masks into the same folder so computes its own results instead of
reusing stale ones; the summary and the report show only the current run's.
"""

from __future__ import annotations

import copy
import dataclasses
import hashlib
import json
import logging
import math
import os
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from scipy import stats

from cnnlens.attribution.core.base import Attribution
from cnnlens.attribution.core.explanation import Explanation
from cnnlens.data.folders import ImageSet, read_data
from cnnlens.data.images import load_image
from cnnlens.data.masks import load_mask, mask_to_input, sample_mask
from cnnlens.data.samples import SAMPLE_NAMES, load_sample
from cnnlens.errors import CnnlensError, DataWarning, ImageLoadError, InputError
from cnnlens.evaluation.metrics import ExplainFn, Metric, MetricResult, Sample, nan_result
from cnnlens.models.loaded import LoadedModel
from cnnlens.outputs import appender, write_json, write_text

log = logging.getLogger(__name__)

#: The reference rows: maps that know nothing about the model.
REFERENCES = ("gaussian", "random")


@dataclass
class BenchImage:
    """One benchmark image and its optional object mask (original size).

    Attributes:
        stem: The image's name in the results: its file stem, or its path (without suffix) relative
            to the data folder when two images share a stem.
        image: The photo.
        mask: ``(height, width)`` boolean object mask, or ``None``.
    """

    stem: str
    image: Image.Image
    mask: np.ndarray | None = None


# -- data ------------------------------------------------------------------------------------------


def load_dataset(data: str | os.PathLike[str], *, split: str | None = None) -> list[BenchImage]:
    """Read the benchmark images (see the module docstring) as a list of :class:`BenchImage`.

    An image that cannot be read is left out, and a mask that cannot be read, is empty (every
    pixel zero) or does not have its image's size is dropped, each with a
    :class:`~cnnlens.errors.DataWarning` naming the file: the image then gets NaN for the
    localisation metrics instead of stopping the benchmark.

    Args:
        data: ``"samples"``, or what :func:`~cnnlens.data.folders.read_data` reads as a plain folder
            of images: a folder, a ``.csv`` manifest, or a folder holding ``manifest.csv`` (read as
            that manifest when ``split`` is given).
        split: Keep only the manifest rows of this split (``train``, ``val`` or ``test``).

    Raises:
        FileNotFoundError: ``data`` does not exist.
        ValueError: No image can be read, ``split`` is given without a manifest or matches no row, two
            masks (or two images that a mask would belong to) share a stem.
    """
    if str(data) == "samples":
        if split is not None:
            raise InputError("--split selects rows of a manifest; 'samples' has no splits")
        return [BenchImage(n, load_sample(n), sample_mask(n)) for n in SAMPLE_NAMES]
    root = Path(data)
    if not root.exists():
        raise FileNotFoundError(f"{root}: no such folder or manifest; pass a folder, a .csv or 'samples'")
    dataset = read_data(root, labelled=False, split=split)
    items = [item for item in (_read_entry(*e) for e in _named(dataset)) if item is not None]
    if not items:
        raise InputError(f"{root}: none of the {len(dataset.samples)} images could be read")
    return items


def _named(dataset: ImageSet) -> list[tuple[str, Path, Path | None]]:
    """Each image with its name: the file stem, or its path relative to the dataset root when stems
    are shared."""
    stems = [s.path.stem for s in dataset.samples]
    if len(set(stems)) == len(stems):
        return [(stem, s.path, s.mask) for stem, s in zip(stems, dataset.samples, strict=True)]
    named = []
    for s in dataset.samples:
        try:
            name = s.path.relative_to(dataset.root).with_suffix("").as_posix()
        except ValueError:
            name = s.path.with_suffix("").as_posix()
        named.append((name, s.path, s.mask))
    return named


def _read_entry(name: str, path: Path, mask_path: Path | None) -> BenchImage | None:
    try:
        image = load_image(path)
    except ImageLoadError as err:
        warnings.warn(f"{err}; image left out of the benchmark", DataWarning, stacklevel=3)
        return None
    mask = None
    if mask_path is not None:
        try:
            mask = load_mask(mask_path)
        except ImageLoadError as err:
            warnings.warn(
                f"{err}; {name} is benchmarked without a mask (its localisation metrics are n/a)",
                DataWarning,
                stacklevel=3,
            )
    if mask is not None and mask.shape != (image.height, image.width):
        warnings.warn(
            f"{mask_path}: mask is {mask.shape[1]}x{mask.shape[0]} but {path.name} is "
            f"{image.width}x{image.height} (masks must have their image's size); {name} is "
            "benchmarked without a mask (its localisation metrics are n/a)",
            DataWarning,
            stacklevel=3,
        )
        mask = None
    return BenchImage(name, image, mask)


def reference_map(kind: str, shape: tuple[int, int], seed: int = 0) -> torch.Tensor:
    """A map that ignores the model: a centred Gaussian (sigma = side / 4) or seeded uniform noise."""
    h, w = shape
    if kind == "gaussian":
        ys = torch.arange(h, dtype=torch.float32) - (h - 1) / 2
        xs = torch.arange(w, dtype=torch.float32) - (w - 1) / 2
        sy, sx = h / 4, w / 4
        return torch.exp(-(ys[:, None] ** 2) / (2 * sy**2) - xs[None] ** 2 / (2 * sx**2))
    if kind == "random":
        return torch.rand((h, w), generator=torch.Generator().manual_seed(seed))
    raise InputError(f"reference map must be one of {', '.join(REFERENCES)}, got {kind!r}")


# -- keys, cache and the results file --------------------------------------------------------------


def digest(*parts: Any) -> str:
    """A short stable hash of JSON-able parts (tensors by their bytes)."""
    h = hashlib.sha256()
    for part in parts:
        if isinstance(part, torch.Tensor):
            h.update(part.detach().cpu().contiguous().numpy().tobytes())
        else:
            h.update(json.dumps(part, sort_keys=True, default=str).encode())
    return h.hexdigest()[:20]


def model_fingerprint(model: LoadedModel) -> str:
    """Hash of the model's name, architecture and every parameter and buffer."""
    tensors = [t for _, t in sorted(model.module.state_dict().items())]
    return digest(model.name, model.arch, model.head, *tensors)


def metric_key(metric: Metric) -> str:
    return f"{metric.name}:{digest(metric.get_params())}"


def row_key(method: Attribution | str) -> str:
    if isinstance(method, str):
        return f"reference:{method}"
    return f"{method.name}:{digest(method.get_params())}"


class AttributionCache:
    """Attribution maps on disk, one ``.npz`` per (model, method, parameters, input, target)."""

    def __init__(self, folder: str | os.PathLike[str], model: LoadedModel):
        self.folder = Path(folder)
        self.model_id = model_fingerprint(model)

    def path(self, method: Attribution, x: torch.Tensor, target: int) -> Path:
        key = digest(self.model_id, method.name, method.get_params(), target, x)
        return self.folder / f"{method.name}-{key}.npz"

    def get(self, method: Attribution, x: torch.Tensor, target: int) -> torch.Tensor:
        """The cached map, or compute it with ``method.explain`` and store it atomically."""
        path = self.path(method, x, target)
        if path.exists():
            return Explanation.load(path).attributions[0]
        explanation = method.explain(x, target)
        self.folder.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(path.stem + ".partial.npz")
        explanation.save(tmp)
        os.replace(tmp, path)
        return explanation.attributions[0]


@dataclass(frozen=True)
class ImageKey:
    """One image of a run and the digests of what its results depend on besides row and metric.

    Attributes:
        name: The image's name (:attr:`BenchImage.stem`).
        target: The explained class (the model's top-1).
        class_name: Its name.
        model: The model's fingerprint.
        inputs: Digest of the model, the target and the preprocessed input.
        mask: Digest of ``inputs`` and the object mask in the input view.
        seed: The seed of this image's random reference map.
    """

    name: str
    target: int
    class_name: str
    model: str
    inputs: str
    mask: str
    seed: int

    @classmethod
    def of(
        cls,
        name: str,
        target: int,
        class_name: str,
        model: str,
        x: torch.Tensor,
        mask: np.ndarray | None,
        seed: int,
    ) -> ImageKey:
        inputs = digest(model, target, x)
        mask_part = None if mask is None else torch.from_numpy(np.ascontiguousarray(mask, dtype=np.uint8))
        return cls(name, target, class_name, model, inputs, digest(inputs, mask_part), seed)

    def input_key(self, row: Attribution | str, metric: Metric) -> str:
        """The digest of what this (row, metric) result depends on besides their parameters."""
        key = self.mask if "mask" in metric.needs else self.inputs
        return digest(key, self.seed) if isinstance(row, str) else key


class ResultsFile:
    """``results.jsonl``: one JSON record per (image, row, metric), appended in whole-row writes.

    A record is found by the image's name, its input key (see :meth:`ImageKey.input_key`), the row
    key and the metric key; records written by older versions without an input key are ignored.
    """

    def __init__(self, path: str | os.PathLike[str]):
        self.path = Path(path)
        self.records: dict[tuple[str, str, str, str], dict[str, Any]] = {}
        if self.path.exists():
            for line in self.path.read_text(encoding="utf-8").splitlines():
                try:
                    rec = json.loads(line)
                except json.JSONDecodeError:
                    log.warning("%s: skipping a truncated line (interrupted run)", self.path)
                    continue
                if isinstance(rec, dict) and "input_key" in rec:
                    self.records[self._key(rec)] = rec

    @staticmethod
    def _key(rec: dict[str, Any]) -> tuple[str, str, str, str]:
        return (rec["image"], rec["input_key"], rec["row_key"], rec["metric_key"])

    def get(self, image: ImageKey, row: Attribution | str, metric: Metric) -> dict[str, Any] | None:
        """The record of this (image, row, metric), or ``None``."""
        return self.records.get((image.name, image.input_key(row, metric), row_key(row), metric_key(metric)))

    def has(self, image: ImageKey, row: Attribution | str, metric: Metric) -> bool:
        return self.get(image, row, metric) is not None

    def models(self) -> set[str]:
        """The fingerprints of the models whose results the file holds."""
        return {str(r.get("model")) for r in self.records.values()}

    def append(self, records: list[dict[str, Any]]) -> None:
        """Append records in one write (after a newline if an interrupted write left none)."""
        if not records:
            return
        text = "".join(json.dumps(r, default=float) + "\n" for r in records)
        with appender(self.path) as f:
            f.seek(0, os.SEEK_END)
            if f.tell() > 0:
                f.seek(-1, os.SEEK_END)
                if f.read(1) != b"\n":
                    text = "\n" + text
            f.write(text.encode("utf-8"))
            f.flush()
            os.fsync(f.fileno())
        for r in records:
            self.records[self._key(r)] = r


# -- running ---------------------------------------------------------------------------------------


def method_explainer(method: Attribution, model: LoadedModel) -> ExplainFn:
    """Recompute ``method``'s map for another module (a randomised copy) or a perturbed input."""

    def explain(module: torch.nn.Module, x: torch.Tensor, target: int) -> torch.Tensor:
        clone = copy.copy(method)
        clone.model = dataclasses.replace(model, module=module)
        return clone.explain(x, target).attributions[0]

    return explain


def constant_explainer(attribution: torch.Tensor) -> ExplainFn:
    """The explainer of a reference map: the same map whatever the model and input."""
    return lambda module, x, target: attribution


def evaluate_metric(metric: Metric, sample: Sample) -> MetricResult:
    """Run one metric; a missing mask or an error becomes a NaN result that says why."""
    if "mask" in metric.needs and sample.mask is None:
        return nan_result("no mask for this image")
    try:
        return metric(sample)
    except (CnnlensError, ValueError, TypeError, RuntimeError) as err:
        log.error("metric %s failed: %s", metric.name, err)
        return nan_result(f"error: {err}")


@dataclass
class BenchmarkRun:
    """What :func:`run_benchmark` needs besides the images."""

    model: LoadedModel
    methods: Sequence[Attribution]
    metrics: Sequence[Metric]
    out: Path
    cache: Path
    references: Sequence[str] = REFERENCES
    seed: int = 0


def run_benchmark(
    run: BenchmarkRun, images: Sequence[BenchImage], progress: Callable[[str], None] | None = None
) -> dict[str, Any]:
    """Compute every missing (image, row, metric) result, appending to ``out/results.jsonl``.

    Args:
        run: Model, methods, metrics, output and cache folders, reference rows, seed.
        images: The images, with masks where known.
        progress: Called with a description after each (image, row).

    Returns:
        The summary (see :func:`summarize`), also written as JSON and CSV under ``run.out``.
    """
    results = ResultsFile(run.out / "results.jsonl")
    cache = AttributionCache(run.cache, run.model)
    if results.models() - {cache.model_id}:
        log.warning(
            "%s also holds results of another model; they are kept, and this run's summary and "
            "report show only %s's",
            results.path,
            run.model.name,
        )
    rows: list[Attribution | str] = [*run.methods, *run.references]
    keys: list[ImageKey] = []
    for index, item in enumerate(images):
        x = run.model.prepare(item.image)
        target, name, _ = run.model.top_k(x, 1)[0][0]
        mask = None if item.mask is None else mask_to_input(item.mask, run.model.preprocessing)
        key = ImageKey.of(item.stem, target, name, cache.model_id, x, mask, run.seed + index)
        keys.append(key)
        for row in rows:
            todo = [m for m in run.metrics if not results.has(key, row, m)]
            if todo:
                sample = _sample(run, row, cache, x, target, mask, key.seed)
                results.append([_record(key, row, m, evaluate_metric(m, sample)) for m in todo])
            if progress is not None:
                progress(f"{item.stem}: {row if isinstance(row, str) else row.name}")
    summary = summarize(run, results, keys)
    write_summary(summary, run.out)
    return summary


def _sample(
    run: BenchmarkRun,
    row: Attribution | str,
    cache: AttributionCache,
    x: torch.Tensor,
    target: int,
    mask: np.ndarray | None,
    seed: int,
) -> Sample:
    if isinstance(row, str):
        attribution = reference_map(row, tuple(x.shape[-2:]), seed)  # type: ignore[arg-type]
        explain = constant_explainer(attribution)
    else:
        attribution = cache.get(row, x, target)
        explain = method_explainer(row, run.model)
    return Sample(
        attribution=attribution,
        inputs=x,
        model=run.model.module,
        target=target,
        mask=mask,
        explain=explain,
        preprocessing=run.model.preprocessing,
    )


def _record(key: ImageKey, row: Attribution | str, metric: Metric, result: MetricResult) -> dict[str, Any]:
    extras = {k: v for k, v in result.extras.items() if isinstance(v, (int, float, str, bool, list))}
    return {
        "image": key.name,
        "model": key.model,
        "target": key.target,
        "input_key": key.input_key(row, metric),
        "row": row_label(row),
        "row_key": row_key(row),
        "metric": metric.name,
        "metric_key": metric_key(metric),
        "value": None if math.isnan(result.value) else float(result.value),
        "curve": None if result.curve is None else [list(result.curve[0]), list(result.curve[1])],
        "extras": extras,
    }


def row_label(row: Attribution | str) -> str:
    return f"reference: {row}" if isinstance(row, str) else row.name


# -- summary ---------------------------------------------------------------------------------------


def mean_ci(values: Sequence[float], level: float = 0.95) -> tuple[float, float, int]:
    """Mean and the half-width of its Student-t confidence interval over the finite values.

    Returns:
        ``(mean, half_width, n)``; the half-width is NaN for fewer than two values.
    """
    v = np.asarray([x for x in values if x is not None and np.isfinite(x)], dtype=np.float64)
    if v.size == 0:
        return math.nan, math.nan, 0
    if v.size == 1:
        return float(v[0]), math.nan, 1
    half = stats.t.ppf((1 + level) / 2, v.size - 1) * v.std(ddof=1) / math.sqrt(v.size)
    return float(v.mean()), float(half), int(v.size)


def summarize(run: BenchmarkRun, results: ResultsFile, images: Sequence[ImageKey]) -> dict[str, Any]:
    """The method x metric table (mean, 95% CI, n), mean curves, per-image values and settings.

    A metric's further columns (:attr:`Metric.columns`, such as ``randomisation_ssim``) get their own
    entry in ``metrics`` and their own cell and curve, read from the metric's record extras.
    """
    rows: list[Attribution | str] = [*run.methods, *run.references]
    table: list[dict[str, Any]] = []
    curves: dict[str, dict[str, Any]] = {}
    for row in rows:
        cells: dict[str, Any] = {}
        for metric in run.metrics:
            found = [r for r in (results.get(i, row, metric) for i in images) if r is not None]
            cells[metric.name] = _cell({r["image"]: r["value"] for r in found})
            _add_curve(curves, metric.name, row, [r["curve"] for r in found if r["curve"] is not None])
            for column in metric.columns:
                cells[column.name] = _cell(
                    {r["image"]: _number(r["extras"].get(column.extra)) for r in found}
                )
                if column.curve is not None:
                    xy = [
                        [r["curve"][0], r["extras"].get(column.curve)]
                        for r in found
                        if r["curve"] is not None
                    ]
                    _add_curve(curves, column.name, row, [c for c in xy if isinstance(c[1], list)])
        table.append({"row": row_label(row), "reference": isinstance(row, str), "metrics": cells})
    return {
        "model": {"name": run.model.name, "arch": run.model.arch, "source": run.model.source},
        "images": [{"stem": i.name, "target": i.target, "class_name": i.class_name} for i in images],
        "methods": [{"name": m.name, "params": m.get_params()} for m in run.methods],
        "metrics": [entry for m in run.metrics for entry in _metric_entries(m)],
        "table": table,
        "curves": curves,
    }


def _number(value: Any) -> float | None:
    return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else None


def _cell(per_image: dict[str, float | None]) -> dict[str, Any]:
    mean, half, n = mean_ci([math.nan if v is None else v for v in per_image.values()])
    return {"mean": mean, "ci95": half, "n": n, "per_image": per_image}


def _add_curve(
    curves: dict[str, dict[str, Any]], name: str, row: Attribution | str, found: list[list[list[float]]]
) -> None:
    mean_curve = _mean_curve(found)
    if mean_curve is not None:
        curves.setdefault(name, {})[row_label(row)] = mean_curve


def _metric_entries(metric: Metric) -> list[dict[str, Any]]:
    """The summary's ``metrics`` entries of one metric: its own, then one per further column."""
    entry = {
        "name": metric.name,
        "category": metric.category,
        "higher_is_better": metric.higher_is_better,
        "summary": metric.summary,
        "reference": metric.reference,
        "params": metric.get_params(),
    }
    columns = [
        {
            **entry,
            "name": c.name,
            "higher_is_better": c.higher_is_better,
            "summary": c.summary,
            "of": metric.name,
        }
        for c in metric.columns
    ]
    return [entry, *columns]


def _mean_curve(curves: list[list[list[float]]]) -> list[list[float]] | None:
    if not curves or any(c[0] != curves[0][0] for c in curves):
        return None
    return [curves[0][0], np.mean([c[1] for c in curves], axis=0).tolist()]


def write_summary(summary: dict[str, Any], out: Path) -> tuple[Path, Path]:
    """Write ``benchmark.json`` and ``benchmark.csv`` (one line per row and metric)."""
    json_path = write_json(out / "benchmark.json", summary, indent=2, default=str)
    lines = ["row,metric,category,higher_is_better,mean,ci95,n"]
    meta = {m["name"]: m for m in summary["metrics"]}
    for row in summary["table"]:
        for name, cell in row["metrics"].items():
            lines.append(
                f"{row['row']},{name},{meta[name]['category']},{meta[name]['higher_is_better']},"
                f"{cell['mean']:.6g},{cell['ci95']:.6g},{cell['n']}"
            )
    csv_path = write_text(out / "benchmark.csv", "\n".join(lines) + "\n")
    return json_path, csv_path
