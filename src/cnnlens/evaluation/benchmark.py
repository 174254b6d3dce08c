"""The benchmark: every method (plus two reference maps) x every metric over a set of images.

Data (see :func:`load_dataset`): ``"samples"`` (the shipped photos with their hand-drawn object
polygons); a folder ``DIR/images/`` searched recursively (class subfolders are fine) with optional
masks ``DIR/masks/<name>.<ext>`` matched by file stem (any non-zero mask pixel is the object); or a
CSV manifest with the columns ``path,label[,mask][,split]`` (what ``cnnlens data synth`` writes),
optionally filtered to one split. A folder without ``images/`` is read as images only. Images without
a usable mask get NaN for the localisation metrics, and so do images whose object fills nearly all of
the model's crop (:data:`MAX_MASK_COVER`): there every map would score about 1 and the metric would
not tell methods apart. ``"grid:SOURCE"`` (SOURCE: ``samples`` or a folder or manifest as above) is
the grid pointing game (:mod:`cnnlens.evaluation.grid`): 2x2 grids of SOURCE's images, each cell
explained for its own class against the cell's exact mask.

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
import time
import warnings
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
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
from cnnlens.data.samples import SAMPLE_NAMES, available_samples, load_sample
from cnnlens.data.transforms import Preprocessing
from cnnlens.errors import CnnlensError, DataWarning, ImageLoadError, InputError
from cnnlens.evaluation.grid import grid_cells, grid_sources
from cnnlens.evaluation.metrics import ExplainFn, Metric, MetricResult, Sample, nan_result
from cnnlens.evaluation.passes import ScoreQueue
from cnnlens.models.loaded import LoadedModel
from cnnlens.outputs import appender, write_json, write_text

log = logging.getLogger(__name__)

#: The reference rows: maps that know nothing about the model.
REFERENCES = ("gaussian", "random")

#: The prefix of the grid pointing game's data (``"grid:samples"``, ``"grid:DIR"``).
GRID_PREFIX = "grid:"

#: A mask covering more than this share of the model's crop is not used for localisation.
MAX_MASK_COVER = 0.9


@dataclass
class BenchImage:
    """One benchmark image and its optional object mask (original size).

    Attributes:
        stem: The image's name in the results: its file stem, or its path (without suffix) relative
            to the data folder when two images share a stem.
        image: The photo.
        mask: ``(height, width)`` boolean object mask, or ``None``.
        target: The class to explain (``None``: the model's top-1), set for grid cells.
    """

    stem: str
    image: Image.Image
    mask: np.ndarray | None = None
    target: int | None = None


# -- data ------------------------------------------------------------------------------------------


def load_dataset(
    data: str | os.PathLike[str],
    *,
    split: str | None = None,
    model: LoadedModel | None = None,
    grids: int | None = None,
    min_probability: float = 0.2,
    seed: int = 0,
) -> list[BenchImage]:
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
        model: The model (needed for ``grid:`` data: it picks the cells' classes).
        grids: Number of grids for ``grid:`` data (default: each source image about once).
        min_probability: For ``grid:`` data, a source image is used when the model's top-1
            probability for it alone is at least this (one image per class, the most confident).
        seed: Seed of the grids' arrangement.

    Raises:
        FileNotFoundError: ``data`` does not exist.
        ValueError: No image can be read, ``split`` is given without a manifest or matches no row, two
            masks (or two images that a mask would belong to) share a stem.
    """
    if str(data).startswith(GRID_PREFIX):
        return _grid_dataset(str(data)[len(GRID_PREFIX) :], split, model, grids, min_probability, seed)
    if grids is not None:
        raise InputError(f"--grids is for grid: data (e.g. grid:{data}), not {data!r}")
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


def _grid_dataset(
    source: str,
    split: str | None,
    model: LoadedModel | None,
    grids: int | None,
    min_probability: float,
    seed: int,
) -> list[BenchImage]:
    if model is None:
        raise InputError("grid: data needs the model (it picks each cell's class)")
    if not source:
        raise InputError("grid: needs a source after the colon: grid:samples, grid:DIR or grid:FILE.csv")
    if source == "samples":
        if split is not None:
            raise InputError("--split selects rows of a manifest; 'samples' has no splits")
        images = [(n, load_sample(n)) for n in available_samples()]
    else:
        images = [(i.stem, i.image) for i in load_dataset(source, split=split)]
    sources = grid_sources(images, model, min_probability=min_probability)
    if len(sources) < 4:
        raise InputError(
            f"grid:{source}: the grid pointing game needs 4 images that {model.name} classifies as 4 "
            f"different classes with probability >= {min_probability}; found {len(sources)} "
            f"({', '.join(f'{s.stem}: {s.class_name}' for s in sources) or 'none'}); "
            "add images or lower --min-probability"
        )
    cells = grid_cells(sources, model.preprocessing, grids, seed=seed)
    return [BenchImage(c.stem, c.image, c.mask, c.target) for c in cells]


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
        return self.get_many(method, [x], [target])[0]

    def get_many(
        self, method: Attribution, inputs: Sequence[torch.Tensor], targets: Sequence[int], chunk: int = 16
    ) -> list[torch.Tensor]:
        """The maps of many ``(1, C, H, W)`` inputs: cached ones read, the missing ones computed by one
        ``method.explain`` call per ``chunk`` inputs of one size (one batch: a gradient method runs one
        pass for all of them), each stored atomically in its own file as soon as its batch is done.
        """
        paths = [self.path(method, x, t) for x, t in zip(inputs, targets, strict=True)]
        maps: list[torch.Tensor | None] = [
            Explanation.load(p).attributions[0] if p.exists() else None for p in paths
        ]
        by_shape: dict[tuple[int, ...], list[int]] = {}
        for i, found in enumerate(maps):
            if found is None:
                by_shape.setdefault(tuple(inputs[i].shape), []).append(i)
        for group in by_shape.values():
            for start in range(0, len(group), chunk):
                todo = group[start : start + chunk]
                explanation = method.explain(torch.cat([inputs[i] for i in todo]), [targets[i] for i in todo])
                for j, i in enumerate(todo):
                    self._store(paths[i], explanation[j])
                    maps[i] = explanation.attributions[j]
        return [m for m in maps if m is not None]

    def _store(self, path: Path, explanation: Explanation) -> None:
        self.folder.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(path.stem + ".partial.npz")
        explanation.save(tmp)
        os.replace(tmp, path)


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
    note: str = ""

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


def method_explainer(
    method: Attribution,
    model: LoadedModel,
    cache: AttributionCache | None = None,
    inputs: torch.Tensor | None = None,
) -> ExplainFn:
    """Recompute ``method``'s map for another module (a randomised copy), a perturbed input or another
    target. The map of the model's own module for ``inputs`` (another class's) goes through
    ``cache``, so it is computed once."""

    def explain(module: torch.nn.Module, x: torch.Tensor, target: int) -> torch.Tensor:
        if cache is not None and inputs is not None and module is model.module:
            x4 = x[None] if x.ndim == 3 else x
            if x4.shape == inputs.shape and torch.equal(x4, inputs):
                return cache.get(method, inputs, target)
        clone = copy.copy(method)
        clone.model = dataclasses.replace(model, module=module)
        return clone.explain(x, target).attributions[0]

    return explain


def constant_explainer(attribution: torch.Tensor) -> ExplainFn:
    """The explainer of a reference map: the same map whatever the model and input."""
    return lambda module, x, target: attribution


def usable_mask(mask: np.ndarray | None, preprocessing: Preprocessing) -> tuple[np.ndarray | None, str]:
    """The object mask in the model's input view, or ``None`` with the reason it is not used.

    A mask that covers more than :data:`MAX_MASK_COVER` of the model's crop is not used: every map
    would put nearly all its mass on the object and score about 1, so the metric could not tell
    methods apart (the chelsea photo: the cat fills the crop).
    """
    if mask is None:
        return None, "no mask for this image"
    view = mask_to_input(mask, preprocessing)
    cover = float(view.mean())
    if cover > MAX_MASK_COVER:
        return None, (
            f"unusable for localisation: the object covers {cover:.0%} of the model's crop "
            f"(more than {MAX_MASK_COVER:.0%}), so every map would score about 1"
        )
    return view, ""


def evaluate_metric(metric: Metric, sample: Sample, no_mask: str = "no mask for this image") -> MetricResult:
    """Run one metric; a missing mask (``no_mask`` says why) or an error becomes a NaN result that
    says why."""
    if "mask" in metric.needs and sample.mask is None:
        return nan_result(no_mask)
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


@dataclass
class Stages:
    """Where a benchmark run spent its time (for ``bench/benchmark_speed.py``).

    Attributes:
        seconds: Wall seconds per stage: ``prepare`` (preprocessing and top-1 classes),
            ``attribution: <method>``, ``perturbation passes`` (the queued forwards of deletion,
            insertion and top-k drop together) and ``metric: <name>`` (each metric's own work).
        forwards: Images evaluated by the queued perturbation passes, after sharing.
    """

    seconds: dict[str, float] = field(default_factory=dict)
    forwards: int = 0

    @contextmanager
    def timed(self, stage: str) -> Iterator[None]:
        start = time.perf_counter()
        try:
            yield
        finally:
            self.seconds[stage] = self.seconds.get(stage, 0.0) + time.perf_counter() - start


def run_benchmark(
    run: BenchmarkRun,
    images: Sequence[BenchImage],
    progress: Callable[[str], None] | None = None,
    *,
    block: int = 8,
    stages: Stages | None = None,
) -> dict[str, Any]:
    """Compute every missing (image, row, metric) result, appending to ``out/results.jsonl``.

    The images go ``block`` at a time: each method explains the block's images in one batch (what the
    cache lacks), then the metrics' perturbation passes of every (image, row) of the block run
    together in large forward batches (:class:`~cnnlens.evaluation.passes.ScoreQueue`), and the
    block's results are appended one (image, row) per write, so an interrupted run resumes.

    Args:
        run: Model, methods, metrics, output and cache folders, reference rows, seed.
        images: The images, with masks where known.
        progress: Called with a description after each (image, row).
        block: Images per block.
        stages: Filled with the time spent per stage, when given.

    Returns:
        The summary (see :func:`summarize`), also written as JSON and CSV under ``run.out``.
    """
    stages = stages if stages is not None else Stages()
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
    with stages.timed("prepare"):
        prepared = _prepare(run, images, cache.model_id)
    for start in range(0, len(images), block):
        batch = prepared[start : start + block]
        todo = {
            (i, r): [m for m in run.metrics if not results.has(p.key, row, m)]
            for i, p in enumerate(batch)
            for r, row in enumerate(rows)
        }
        samples = _block_samples(run, rows, cache, batch, todo, stages)
        evaluated = _evaluate_block(run.model.module, samples, todo, [p.why for p in batch], stages)
        for (i, r), found in evaluated:
            key, row = batch[i].key, rows[r]
            if found:
                results.append([_record(key, row, m, result) for m, result in found])
            if progress is not None:
                progress(f"{images[start + i].stem}: {row if isinstance(row, str) else row.name}")
    summary = summarize(run, results, [p.key for p in prepared])
    write_summary(summary, run.out)
    return summary


@dataclass
class _Prepared:
    """One image of a run: its model input, its key and its usable mask (with the reason if none)."""

    x: torch.Tensor
    key: ImageKey
    mask: np.ndarray | None
    why: str


def _prepare(run: BenchmarkRun, images: Sequence[BenchImage], model_id: str) -> list[_Prepared]:
    """Preprocess every image and find the top-1 class of those without a given target, in one
    batch per image size."""
    xs = [run.model.prepare(item.image) for item in images]
    top: dict[int, tuple[int, str]] = {}
    by_shape: dict[tuple[int, ...], list[int]] = {}
    for i, item in enumerate(images):
        if item.target is None:
            by_shape.setdefault(tuple(xs[i].shape), []).append(i)
    for group in by_shape.values():
        found = run.model.top_k(torch.cat([xs[i] for i in group]), 1)
        top |= {i: (t[0][0], t[0][1]) for i, t in zip(group, found, strict=True)}
    prepared = []
    for index, (item, x) in enumerate(zip(images, xs, strict=True)):
        if item.target is not None:
            target, name = item.target, run.model.class_names[item.target]
        else:
            target, name = top[index]
        mask, why = usable_mask(item.mask, run.model.preprocessing)
        key = ImageKey.of(item.stem, target, name, model_id, x, mask, run.seed + index)
        key = dataclasses.replace(key, note="" if mask is not None or item.mask is None else why)
        prepared.append(_Prepared(x, key, mask, why))
    return prepared


def _block_samples(
    run: BenchmarkRun,
    rows: Sequence[Attribution | str],
    cache: AttributionCache,
    batch: Sequence[_Prepared],
    todo: dict[tuple[int, int], list[Metric]],
    stages: Stages,
) -> dict[tuple[int, int], Sample]:
    """The sample of every (image, row) of a block with results to compute; each method's maps are
    computed for the block's images in one batch."""
    samples: dict[tuple[int, int], Sample] = {}
    for r, row in enumerate(rows):
        needed = [i for i in range(len(batch)) if todo[i, r]]
        if not needed:
            continue
        if isinstance(row, str):
            maps = [reference_map(row, tuple(batch[i].x.shape[-2:]), batch[i].key.seed) for i in needed]  # type: ignore[arg-type]
        else:
            with stages.timed(f"attribution: {row.name}"):
                targets = [batch[i].key.target for i in needed]
                maps = cache.get_many(row, [batch[i].x for i in needed], targets)
        for i, attribution in zip(needed, maps, strict=True):
            p = batch[i]
            explain = (
                constant_explainer(attribution)
                if isinstance(row, str)
                else method_explainer(row, run.model, cache, p.x)
            )
            samples[i, r] = Sample(
                attribution=attribution,
                inputs=p.x,
                model=run.model.module,
                target=p.key.target,
                mask=p.mask,
                explain=explain,
                preprocessing=run.model.preprocessing,
            )
    return samples


def _evaluate_block(
    module: torch.nn.Module,
    samples: dict[tuple[int, int], Sample],
    todo: dict[tuple[int, int], list[Metric]],
    no_mask: Sequence[str],
    stages: Stages,
) -> Iterator[tuple[tuple[int, int], list[tuple[Metric, MetricResult]]]]:
    """Every metric of ``todo`` on its sample, yielded one (image, row) at a time in ``todo``'s order.

    The queued metrics' passes of the whole block run first, in one :class:`ScoreQueue`; the other
    metrics are called one sample at a time as their (image, row) comes. A missing mask or an error
    is a NaN result that says why (``no_mask[i]``: why image ``i`` has no mask), as in
    :func:`evaluate_metric`.
    """
    queue = ScoreQueue(module)
    pending: dict[tuple[int, int, str], Callable[[], MetricResult] | MetricResult] = {}
    for (i, r), metrics in todo.items():
        for metric in metrics:
            if "mask" in metric.needs and samples[i, r].mask is None:
                continue
            finish: Callable[[], MetricResult] | MetricResult | None
            with stages.timed(f"metric: {metric.name}"):
                try:
                    finish = metric.queue(samples[i, r], queue)
                except (CnnlensError, ValueError, TypeError, RuntimeError) as err:
                    log.error("metric %s failed: %s", metric.name, err)
                    finish = nan_result(f"error: {err}")
            if finish is not None:
                pending[i, r, metric.name] = finish
    failed = ""
    if len(queue):
        with stages.timed("perturbation passes"):
            try:
                queue.run()
            except (CnnlensError, ValueError, TypeError, RuntimeError) as err:
                log.error("the perturbation passes failed: %s", err)
                failed = f"error: {err}"
        stages.forwards += queue.forwards
    for (i, r), metrics in todo.items():
        found = []
        for metric in metrics:
            with stages.timed(f"metric: {metric.name}"):
                queued = pending.get((i, r, metric.name))
                found.append((metric, _finish(metric, samples[i, r], queued, no_mask[i], failed)))
        yield (i, r), found


def _finish(
    metric: Metric,
    sample: Sample,
    queued: Callable[[], MetricResult] | MetricResult | None,
    no_mask: str,
    failed: str,
) -> MetricResult:
    """The result of ``metric`` on ``sample``: its queued one finished (``failed``: why the queue did
    not run), or the metric called now."""
    if queued is None:
        return evaluate_metric(metric, sample, no_mask)
    if isinstance(queued, MetricResult):
        return queued
    if failed:
        return nan_result(failed)
    try:
        return queued()
    except (CnnlensError, ValueError, TypeError, RuntimeError) as err:
        log.error("metric %s failed: %s", metric.name, err)
        return nan_result(f"error: {err}")


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
    entries = [entry for m in run.metrics for entry in _metric_entries(m)]
    flag_below_random(table, {e["name"]: e["higher_is_better"] for e in entries})
    return {
        "model": {"name": run.model.name, "arch": run.model.arch, "source": run.model.source},
        "images": [
            {"stem": i.name, "target": i.target, "class_name": i.class_name, "note": i.note} for i in images
        ],
        "methods": [
            {"name": m.name, "params": m.get_params(), "class_sensitive": m.class_sensitive}
            for m in run.methods
        ],
        "metrics": entries,
        "table": table,
        "curves": curves,
    }


def flag_below_random(table: list[dict[str, Any]], higher_is_better: dict[str, bool]) -> None:
    """Set ``cell["flag"]`` on every method cell whose mean does not beat the random reference's.

    A method that does no better than a map of noise on a metric has shown nothing there; the flag
    says so in the CLI table and the report. Cells without a random reference (``--no-references``)
    or without a value are not flagged.
    """
    random_row = next((r for r in table if r["row"] == row_label("random")), None)
    for row in table:
        for name, cell in row["metrics"].items():
            ref = None if random_row is None else random_row["metrics"].get(name, {}).get("mean")
            mean = cell["mean"]
            finite = ref is not None and math.isfinite(ref) and math.isfinite(mean)
            beats = finite and (mean > ref if higher_is_better[name] else mean < ref)
            cell["flag"] = bool(finite and not row["reference"] and not beats)


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
