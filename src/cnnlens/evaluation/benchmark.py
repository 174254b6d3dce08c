"""The benchmark: every method (plus two reference maps) x every metric over a set of images.

Data: ``"samples"`` (the shipped photos with their hand-drawn object polygons) or a folder laid out as
``DIR/images/<name>.<ext>`` with optional masks ``DIR/masks/<name>.<ext>`` matched by file stem (any
non-zero mask pixel is the object). A folder without ``images/`` is read as images only. Images without
a mask get NaN for the localisation metrics.

Attributions are cached on disk (``.npz`` keyed by model, method, parameters, input and target), so a
re-run with a new metric does not recompute them. Results are appended to ``results.jsonl`` one
(image, row) at a time, in one write, so an interrupted run resumes where it stopped; metric results
are keyed by the metric's parameters, so changing them recomputes only those.
"""

from __future__ import annotations

import copy
import dataclasses
import hashlib
import json
import logging
import math
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from scipy import stats

from cnnlens.attribution.base import Attribution
from cnnlens.attribution.explanation import Explanation
from cnnlens.data.images import load_image
from cnnlens.data.masks import load_mask, mask_to_input, sample_mask
from cnnlens.data.samples import SAMPLE_NAMES, load_sample
from cnnlens.errors import CnnlensError
from cnnlens.evaluation.metrics import ExplainFn, Metric, MetricResult, Sample, nan_result
from cnnlens.models.loaded import LoadedModel

log = logging.getLogger(__name__)

#: The reference rows: maps that know nothing about the model.
REFERENCES = ("gaussian", "random")
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp")


@dataclass
class BenchImage:
    """One benchmark image and its optional object mask (original size)."""

    stem: str
    image: Image.Image
    mask: np.ndarray | None = None


# -- data ------------------------------------------------------------------------------------------


def load_dataset(data: str | os.PathLike[str]) -> list[BenchImage]:
    """``"samples"`` or a folder (see the module docstring) as a list of :class:`BenchImage`.

    Raises:
        FileNotFoundError: The folder does not exist.
        ValueError: It holds no image, or a mask does not match its image's size.
    """
    if str(data) == "samples":
        return [BenchImage(n, load_sample(n), sample_mask(n)) for n in SAMPLE_NAMES]
    root = Path(data)
    if not root.is_dir():
        raise FileNotFoundError(f"{root}: no such folder; pass a folder of images or 'samples'")
    image_dir = root / "images" if (root / "images").is_dir() else root
    files = sorted(p for p in image_dir.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
    if not files:
        raise ValueError(f"{image_dir}: no image files ({', '.join(IMAGE_SUFFIXES)})")
    masks = _mask_files(root / "masks")
    items = []
    for path in files:
        image = load_image(path)
        mask = load_mask(masks[path.stem]) if path.stem in masks else None
        if mask is not None and mask.shape != (image.height, image.width):
            raise ValueError(
                f"{masks[path.stem]}: mask is {mask.shape[1]}x{mask.shape[0]} but {path.name} is "
                f"{image.width}x{image.height}; masks must have their image's size"
            )
        items.append(BenchImage(path.stem, image, mask))
    return items


def _mask_files(folder: Path) -> dict[str, Path]:
    if not folder.is_dir():
        return {}
    return {p.stem: p for p in sorted(folder.iterdir()) if p.suffix.lower() in IMAGE_SUFFIXES}


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
    raise ValueError(f"reference map must be one of {', '.join(REFERENCES)}, got {kind!r}")


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


class ResultsFile:
    """``results.jsonl``: one JSON record per (image, row, metric), appended in whole-row writes."""

    def __init__(self, path: str | os.PathLike[str]):
        self.path = Path(path)
        self.records: dict[tuple[str, str, str], dict[str, Any]] = {}
        if self.path.exists():
            for line in self.path.read_text(encoding="utf-8").splitlines():
                try:
                    rec = json.loads(line)
                except json.JSONDecodeError:
                    log.warning("%s: skipping a truncated line (interrupted run)", self.path)
                    continue
                self.records[(rec["image"], rec["row_key"], rec["metric_key"])] = rec

    def has(self, image: str, row: str, metric: str) -> bool:
        return (image, row, metric) in self.records

    def append(self, records: list[dict[str, Any]]) -> None:
        """Append records in one write (after a newline if an interrupted write left none)."""
        if not records:
            return
        text = "".join(json.dumps(r, default=float) + "\n" for r in records)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.path, "a+b") as f:
            f.seek(0, os.SEEK_END)
            if f.tell() > 0:
                f.seek(-1, os.SEEK_END)
                if f.read(1) != b"\n":
                    text = "\n" + text
            f.write(text.encode("utf-8"))
            f.flush()
            os.fsync(f.fileno())
        for r in records:
            self.records[(r["image"], r["row_key"], r["metric_key"])] = r


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
    rows: list[Attribution | str] = [*run.methods, *run.references]
    targets: dict[str, tuple[int, str]] = {}
    for index, item in enumerate(images):
        x = run.model.prepare(item.image)
        target, name, _ = run.model.top_k(x, 1)[0][0]
        targets[item.stem] = (target, name)
        mask = None if item.mask is None else mask_to_input(item.mask, run.model.preprocessing)
        for row in rows:
            todo = [m for m in run.metrics if not results.has(item.stem, row_key(row), metric_key(m))]
            if todo:
                sample = _sample(run, row, cache, x, target, mask, run.seed + index)
                results.append([_record(item.stem, row, m, evaluate_metric(m, sample)) for m in todo])
            if progress is not None:
                progress(f"{item.stem}: {row if isinstance(row, str) else row.name}")
    summary = summarize(run, results, [i.stem for i in images], targets)
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


def _record(image: str, row: Attribution | str, metric: Metric, result: MetricResult) -> dict[str, Any]:
    extras = {k: v for k, v in result.extras.items() if isinstance(v, (int, float, str, bool, list))}
    return {
        "image": image,
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


def summarize(
    run: BenchmarkRun,
    results: ResultsFile,
    stems: list[str],
    targets: dict[str, tuple[int, str]],
) -> dict[str, Any]:
    """The method x metric table (mean, 95% CI, n), mean curves, per-image values and settings."""
    rows: list[Attribution | str] = [*run.methods, *run.references]
    table: list[dict[str, Any]] = []
    curves: dict[str, dict[str, Any]] = {}
    for row in rows:
        cells: dict[str, Any] = {}
        for metric in run.metrics:
            recs = [results.records.get((s, row_key(row), metric_key(metric))) for s in stems]
            found = [r for r in recs if r is not None]
            mean, half, n = mean_ci([r["value"] if r["value"] is not None else math.nan for r in found])
            cells[metric.name] = {
                "mean": mean,
                "ci95": half,
                "n": n,
                "per_image": {r["image"]: r["value"] for r in found},
            }
            mean_curve = _mean_curve([r["curve"] for r in found if r["curve"] is not None])
            if mean_curve is not None:
                curves.setdefault(metric.name, {})[row_label(row)] = mean_curve
        table.append({"row": row_label(row), "reference": isinstance(row, str), "metrics": cells})
    return {
        "model": {"name": run.model.name, "arch": run.model.arch, "source": run.model.source},
        "images": [{"stem": s, "target": targets[s][0], "class_name": targets[s][1]} for s in stems],
        "methods": [{"name": m.name, "params": m.get_params()} for m in run.methods],
        "metrics": [
            {
                "name": m.name,
                "category": m.category,
                "higher_is_better": m.higher_is_better,
                "summary": m.summary,
                "reference": m.reference,
                "params": m.get_params(),
            }
            for m in run.metrics
        ],
        "table": table,
        "curves": curves,
    }


def _mean_curve(curves: list[list[list[float]]]) -> list[list[float]] | None:
    if not curves or any(c[0] != curves[0][0] for c in curves):
        return None
    return [curves[0][0], np.mean([c[1] for c in curves], axis=0).tolist()]


def write_summary(summary: dict[str, Any], out: Path) -> tuple[Path, Path]:
    """Write ``benchmark.json`` and ``benchmark.csv`` (one line per row and metric)."""
    out.mkdir(parents=True, exist_ok=True)
    json_path = out / "benchmark.json"
    json_path.write_text(json.dumps(summary, indent=2, default=str, allow_nan=True) + "\n")
    lines = ["row,metric,category,higher_is_better,mean,ci95,n"]
    meta = {m["name"]: m for m in summary["metrics"]}
    for row in summary["table"]:
        for name, cell in row["metrics"].items():
            lines.append(
                f"{row['row']},{name},{meta[name]['category']},{meta[name]['higher_is_better']},"
                f"{cell['mean']:.6g},{cell['ci95']:.6g},{cell['n']}"
            )
    csv_path = out / "benchmark.csv"
    csv_path.write_text("\n".join(lines) + "\n")
    return json_path, csv_path
