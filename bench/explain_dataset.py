"""Benchmark of ``cnnlens explain-dataset``: images per second against the floor; the Ray engine's
overhead and a scaling model. Prints ratios and measured constants (no timed tests).

1. Local engine: for each method (Grad-CAM, saliency, occlusion), the whole pipeline against the floor
   on the same images. Pipeline: ``explain_dataset`` (reading the manifest, decoding in DataLoader worker
   processes, the batched passes, the per-map numbers, the zarr and Parquet writes, the final merge and
   class means). Floor: the same batched passes (one forward for the predictions, then the method on
   the whole batch) on tensors decoded beforehand, in this process. The images are cut into chunks
   (``--chunk``); each chunk runs floor then pipeline, or pipeline then floor (alternately), so a change
   in the machine's load hits both alike. Each chunk's pipeline is a whole run into its own store, so
   worker start-up, store creation and the merge are paid once per chunk (more often than by one run
   over all the images: the ratio is an upper bound). Target: at most 1.2x the floor. Also printed:
   CPU seconds (``getrusage``) of the floor, of the pipeline's process and of its decoding workers.
2. ``--ray``: the Ray engine (local Ray; 1 and 2 actors) against the local engine on the same images,
   and the constants of the scaling model of docs/decisions.md (issue 19): ``ray.init``, actor start-up
   (model load included), Ray's cost per batch, compute and decoding per batch, the driver's write and
   unpickling per batch, the final merge; then the predicted time for N = 1, 2, 4, 8, 16 workers.
   The actors' times come from their own clocks (a logging subclass of the engine's actor).

Data: ``cnnlens data synth`` shapes (2 classes) at 224 px, generated into ``--data`` (reused when it
already holds a manifest).

Run: ``PYTHONPATH=src python bench/explain_dataset.py [--images 2000] [--chunk 500]
[--model mobilenet_v3_small] [--methods gradcam,saliency,occlusion] [--occlusion 56,56] [--profile]
[--ray | --ray-only] [--threads 1] [--data DIR]``.
"""

from __future__ import annotations

import argparse
import cProfile
import itertools
import json
import logging
import math
import pickle
import pstats
import resource
import shutil
import statistics
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import torch

from cnnlens import capabilities
from cnnlens.attribution import create
from cnnlens.attribution.core.base import Attribution
from cnnlens.cli.common import console, progress_bar
from cnnlens.data.folders import ImageSet, Sample, read_data
from cnnlens.data.stream import default_workers, stream_batches
from cnnlens.data.synthetic import SynthConfig, generate
from cnnlens.dataset_explain import Job, Recipe, explain_dataset, ray_engine
from cnnlens.dataset_explain.engine import explain_batch
from cnnlens.dataset_explain.ray_engine import BatchExplainer
from cnnlens.dataset_explain.store import Store
from cnnlens.models import LoadedModel, load_model

TARGET = 1.2


def floor(model: LoadedModel, method: Attribution, batches: Sequence[torch.Tensor], tick: Callable) -> float:
    """Seconds for the pipeline's passes on pre-decoded batches: predictions, then the method."""
    start = time.perf_counter()
    for x in batches:
        preds = model.logits(x).argmax(1)
        method.explain(x, target=[int(p) for p in preds])
        tick(len(x))
    return time.perf_counter() - start


def pipeline(
    job: Job,
    built: tuple[LoadedModel, list[Attribution]],
    out: Path,
    tick: Callable[[int], None] = lambda n: None,
    engine: str = "local",
    workers: int | None = None,
) -> list[float]:
    """Timestamps (``time.time()``, which Ray's actors share): start, then after each batch written,
    then the end (merge and class means)."""
    stamps = [time.time()]

    def advance(n: int) -> None:
        stamps.append(time.time())
        tick(n)

    explain_dataset(job, out, built=built, engine=engine, advance=advance, ray_workers=workers)
    stamps.append(time.time())
    return stamps


def cpu() -> np.ndarray:
    """CPU seconds (user + system) of this process and of its finished child processes (the
    decoding workers, counted once the pipeline has joined them)."""
    me, children = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return np.array([me.ru_utime + me.ru_stime, children.ru_utime + children.ru_stime])


def manifest_of(samples: Sequence[Sample], data: ImageSet, path: Path) -> Path:
    rows = "".join(f"{s.path},{data.class_names[s.label]}\n" for s in samples)
    path.write_text("path,label\n" + rows)
    return path


def method_of(name: str, model: LoadedModel, args: argparse.Namespace) -> Attribution:
    if name == "occlusion":
        window, stride = (int(v) for v in args.occlusion.split(","))
        return create(name, model, window=window, stride=stride)
    return create(name, model)


def local_part(args: argparse.Namespace, data: ImageSet, model: LoadedModel, root: Path) -> None:
    workers = default_workers(args.chunk) if args.workers is None else args.workers
    print(
        f"\nLocal engine: {args.model}, batches of {args.batch_size}, chunks of {args.chunk} images "
        f"(floor and pipeline alternated per chunk), {workers} decoding workers; target <= {TARGET}x"
    )
    print(
        f"{'method':10} {'images':>6} {'floor img/s':>12} {'pipeline img/s':>15} {'ratio':>6} "
        f"{'chunk ratios (min..max)':>24}"
    )
    for name in args.methods.split(","):
        method = method_of(name, model, args)
        count = min(args.occlusion_images or args.images, args.images) if name == "occlusion" else args.images
        samples = data.samples[:count]
        recipe = Recipe.of([method], model=args.model, pretrained=args.pretrained)
        pairs: list[tuple[float, float]] = []
        cpus: list[tuple[np.ndarray, np.ndarray]] = []
        warm = next(iter(stream_batches(samples[: args.batch_size], model.preprocessing, workers=0)))
        floor(model, method, [warm.inputs], lambda n: None)  # warm-up
        with progress_bar(f"{name}: floor + pipeline", 2 * count) as advance:
            for k, start in enumerate(range(0, count, args.chunk)):
                part = samples[start : start + args.chunk]
                batches = [
                    b.inputs for b in stream_batches(part, model.preprocessing, batch_size=args.batch_size)
                ]  # decoded beforehand, not timed
                job = Job(
                    data=str(manifest_of(part, data, root / f"{name}-{k}.csv")),
                    recipe=recipe,
                    batch_size=args.batch_size,
                    workers=args.workers,
                )
                store = root / f"store-{name}-{k}"
                tick = lambda n: advance(n=n)  # noqa: E731
                for step in (0, 1) if k % 2 == 0 else (1, 0):
                    before = cpu()
                    if step == 0:
                        t_floor = floor(model, method, batches, tick)
                        cpu_floor = cpu() - before
                    else:
                        stamps = pipeline(job, (model, [method]), store, tick)
                        cpu_pipe = cpu() - before
                pairs.append((t_floor, stamps[-1] - stamps[0]))
                cpus.append((cpu_floor, cpu_pipe))
                console.print(
                    f"  chunk {k}: {len(part)} images, floor {t_floor:.1f} s, pipeline "
                    f"{pairs[-1][1]:.1f} s, ratio {pairs[-1][1] / t_floor:.2f}; CPU s: floor "
                    f"{cpu_floor[0]:.1f}, pipeline {cpu_pipe[0]:.1f} + decoding workers {cpu_pipe[1]:.1f}"
                )
                shutil.rmtree(store)
                del batches
        t_floor, t_pipe = sum(f for f, _ in pairs), sum(p for _, p in pairs)
        ratios = [p / f for f, p in pairs]
        verdict = "PASS" if t_pipe / t_floor <= TARGET else "FAIL"
        spread = f"{min(ratios):.2f}..{max(ratios):.2f} ({len(ratios)})"
        print(
            f"{name:10} {count:6d} {count / t_floor:12.2f} {count / t_pipe:15.2f} {t_pipe / t_floor:6.2f} "
            f"{spread:>24}  {verdict}"
        )
        c_floor, c_pipe = sum(f[0] for f, _ in cpus), np.sum([p for _, p in cpus], axis=0)
        print(
            f"{'':10} CPU ms/image: floor {c_floor / count * 1000:.1f}; pipeline: this process "
            f"{c_pipe[0] / count * 1000:.1f} ({c_pipe[0] / c_floor:.2f}x the floor's), decoding processes "
            f"{c_pipe[1] / count * 1000:.1f} (all together {c_pipe.sum() / c_floor:.2f}x the floor's)"
        )
        if args.profile:
            profile(args, data, model, method, recipe, root)


def profile(
    args: argparse.Namespace,
    data: ImageSet,
    model: LoadedModel,
    method: Attribution,
    recipe: Recipe,
    root: Path,
) -> None:
    """cProfile of one pipeline chunk (this process only: decoding runs in the workers)."""
    part = data.samples[: args.chunk]
    csv = manifest_of(part, data, root / "profile.csv")
    job = Job(data=str(csv), recipe=recipe, batch_size=args.batch_size)
    prof = cProfile.Profile()
    prof.enable()
    explain_dataset(job, root / "store-profile", built=(model, [method]))
    prof.disable()
    shutil.rmtree(root / "store-profile")
    pstats.Stats(prof).sort_stats("tottime").print_stats(18)


class _TimedExplainer(BatchExplainer):
    """The Ray engine's actor, logging its wall-clock times to the file :attr:`path` (a class
    attribute: Ray ships this class, defined in ``__main__``, by value)."""

    path = ""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        created = time.time()
        super().__init__(*args, **kwargs)
        self._log({"created": created, "built": time.time()})

    def __call__(self, batch: dict[str, Any]) -> dict[str, Any]:
        begin = time.time()
        out = super().__call__(batch)
        self._log({"begin": begin, "end": time.time()})
        return out

    @staticmethod
    def _log(entry: dict[str, float]) -> None:
        with open(_TimedExplainer.path, "a") as f:
            f.write(json.dumps(entry) + "\n")


@contextmanager
def timed_actors(path: Path) -> Iterator[None]:
    """Run the Ray engine with :class:`_TimedExplainer`, logging into ``path``."""
    _TimedExplainer.path = str(path)
    saved = ray_engine.BatchExplainer
    ray_engine.BatchExplainer = _TimedExplainer  # type: ignore[misc]
    try:
        yield
    finally:
        ray_engine.BatchExplainer = saved  # type: ignore[misc]


def ray_part(args: argparse.Namespace, data: ImageSet, model: LoadedModel, root: Path) -> None:
    import ray

    method = create("gradcam", model)
    s = args.ray_batch_size
    samples = data.samples[: args.ray_images]
    n_img, n_b = len(samples), math.ceil(len(samples) / s)
    recipe = Recipe.of([method], model=args.model, pretrained=args.pretrained)
    job = Job(data=str(manifest_of(samples, data, root / "ray.csv")), recipe=recipe, batch_size=s)

    # Per-batch constants, measured in this process.
    start = time.perf_counter()
    batches = list(stream_batches(samples, model.preprocessing, batch_size=s, workers=0))
    d = (time.perf_counter() - start) / n_b  # decoding one batch in-process (what an actor does)
    c = floor(model, method, [b.inputs for b in batches], lambda n: None) / n_b
    rows, maps = explain_batch(model, [method], batches[0], samples, data, "pred")
    payload = pickle.dumps((0, rows, maps), protocol=pickle.HIGHEST_PROTOCOL)
    start = time.perf_counter()
    for _ in range(5):
        pickle.loads(payload)
    u = (time.perf_counter() - start) / 5  # the driver unpickles each batch's result

    writes: list[float] = []
    original = Store.write_batch

    def timed(self: Store, *a: Any, **kw: Any) -> None:
        t = time.perf_counter()
        original(self, *a, **kw)
        writes.append(time.perf_counter() - t)

    Store.write_batch = timed  # type: ignore[method-assign]
    try:
        local = pipeline(job, (model, [method]), root / "ray-local")
    finally:
        Store.write_batch = original  # type: ignore[method-assign]
    w = statistics.median(writes)
    t_finish = local[-1] - local[-2]

    start = time.perf_counter()
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, logging_level=logging.ERROR)
    t_init = time.perf_counter() - start
    print(f"\nRay engine, Grad-CAM, {args.model}, {n_img} images in {n_b} batches of {s}")
    print(f"{'engine':14} {'to 1st batch s':>15} {'then s/batch':>13} {'merge s':>8} {'total s':>8}")

    def show(label: str, st: list[float]) -> tuple[float, float, float]:
        first, rest = st[1] - st[0], (st[-2] - st[1]) / max(1, len(st) - 3)
        print(f"{label:14} {first:15.2f} {rest:13.3f} {st[-1] - st[-2]:8.2f} {st[-1] - st[0]:8.2f}")
        return first, rest, st[-1] - st[0]

    l_first, _, l_total = show("local", local)
    runs: dict[int, tuple[float, float, float]] = {}
    timeline = root / "ray-times.jsonl"
    spans: dict[int, list[dict[str, float]]] = {}
    merges: dict[int, float] = {}
    try:
        for workers in args.ray_workers:
            timeline.unlink(missing_ok=True)
            with timed_actors(timeline):
                st = pipeline(job, (model, [method]), root / f"ray-{workers}", engine="ray", workers=workers)
            runs[workers] = show(f"ray, {workers} actor{'s' * (workers > 1)}", st)
            merges[workers] = st[-1] - st[-2]
            spans[workers] = [{k: v - st[0] for k, v in json.loads(x).items()} for x in timeline.open()]
    finally:
        ray.shutdown()

    # Ray Data hands results over in bursts, so the driver's clock does not time batches: the actors
    # log (wall clock, shared by the processes of one machine) when they start, are built, and begin
    # and end each batch.
    one = spans[min(spans)]
    calls = sorted((e for e in one if "begin" in e), key=lambda e: e["begin"])
    built = [e for e in one if "built" in e]
    t_actor = min(e["built"] for e in built)  # from the run's start: pool, processes, imports, model
    t_model = statistics.median(e["built"] - e["created"] for e in built)
    a = statistics.median(e["end"] - e["begin"] for e in calls)  # decode + explain + pickle, in an actor
    gaps = [q["begin"] - p["end"] for p, q in itertools.pairwise(calls)]
    o = statistics.median(gaps) if gaps else float("nan")  # the actor idle between batches
    t_first = calls[0]["begin"] - t_actor  # the first call waits for the pool to be ready
    local_per_batch = (l_total - l_first - t_finish) / max(1, n_b - 1)
    merge = merges[min(merges)] / n_img  # the merge after the Ray engine (the local one also waits
    # for its decoding processes to exit)
    print(
        f"\nconstants: ray.init t_init={t_init:.2f} s; actor pool ready t_actor={t_actor:.2f} s after "
        f"the run's start (model build in the actor {t_model:.2f} s; first call {t_first:.2f} s later); "
        f"per batch of {s}: in an actor a={a:.3f} s ({a / s * 1000:.1f} ms/image; here: compute "
        f"c={c:.3f} s + decoding d={d:.3f} s), Ray's gap between calls o={o:.3f} s, driver write "
        f"w={w:.3f} s + unpickle u={u:.4f} s; merge {merge * 1000:.2f} ms/image"
    )
    print(
        f"overhead against the local engine: fixed {t_init + runs[min(runs)][0] - l_first:.1f} s "
        f"(ray.init + pool start-up), then {(a + o - local_per_batch) / s * 1000:+.1f} ms/image "
        f"((a + o) / local time per batch = {(a + o) / local_per_batch:.2f})"
    )
    print("model: T(N) = t_init + t_actor + n_b * max((a + o) / N, w + u) + n_img * merge")
    bound = (a + o) / (w + u)
    print(f"the single writer becomes the bound at N = (a + o) / (w + u) = {bound:.0f} workers")
    counts = (n_img, args.predict_images)
    print(f"{'N':>3} " + " ".join(f"{f'T s, {n} img':>16}" for n in counts) + f"{'measured s':>12}")
    for n in (1, 2, 4, 8, 16):
        cells = []
        for images in counts:
            nb = math.ceil(images / s)
            t = t_init + t_actor + nb * max((a + o) / n, w + u) + images * merge
            cells.append(f"{t:16.1f}")
        measured = f"{t_init + runs[n][2]:12.1f}" if n in runs else ""
        print(f"{n:3d} " + " ".join(cells) + measured)


def dataset(args: argparse.Namespace, root: Path) -> ImageSet:
    need = max(args.images, args.ray_images if args.ray else 0)
    folder = Path(args.data) if args.data else root / "shapes"
    manifest = folder / "manifest.csv"
    if not manifest.is_file():
        start = time.perf_counter()
        generate(folder, SynthConfig(classes=2, per_class=(need + 1) // 2, size=224))
        print(f"generated {folder}: ({time.perf_counter() - start:.0f} s)")
    data = read_data(manifest)
    if len(data.samples) < need:
        raise SystemExit(f"{folder} holds {len(data.samples)} images, {need} needed")
    # the manifest lists the classes one after the other: interleave them, so every chunk has both
    by_class = [[s for s in data.samples if s.label == k] for k in range(len(data.class_names))]
    mixed = [s for group in zip(*by_class, strict=False) for s in group]
    print(f"data: {folder}, {len(data.samples)} synthetic images at 224 px, {len(data.class_names)} classes")
    return ImageSet(samples=mixed, class_names=data.class_names, root=data.root)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--images", type=int, default=2000)
    parser.add_argument("--chunk", type=int, default=500, help="images per floor/pipeline pair")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--model", default="mobilenet_v3_small")
    parser.add_argument("--pretrained", action="store_true", help="pretrained weights (else random)")
    parser.add_argument("--methods", default="gradcam,saliency,occlusion")
    parser.add_argument("--occlusion", default="56,56", help="occlusion's WINDOW,STRIDE")
    parser.add_argument("--occlusion-images", type=int, default=None, help="default: --images")
    parser.add_argument("--workers", type=int, default=None, help="decoding processes")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    parser.add_argument("--data", default=None, help="folder of the synthetic set (made when missing)")
    parser.add_argument("--profile", action="store_true", help="cProfile one pipeline chunk per method")
    parser.add_argument("--ray", action="store_true", help="also the Ray engine and its scaling model")
    parser.add_argument("--ray-only", action="store_true", help="only the Ray part")
    parser.add_argument("--ray-images", type=int, default=128)
    parser.add_argument("--ray-batch-size", type=int, default=16)
    parser.add_argument("--ray-workers", type=lambda v: [int(x) for x in v.split(",")], default=[1, 2])
    parser.add_argument("--predict-images", type=int, default=100_000)
    args = parser.parse_args()
    args.ray = args.ray or args.ray_only
    if args.threads:
        torch.set_num_threads(args.threads)
    print(f"CPU: {capabilities.cpu_name()}; torch threads: {torch.get_num_threads()}")
    model = load_model(args.model, pretrained=args.pretrained)
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        data = dataset(args, root)
        if not args.ray_only:
            local_part(args, data, model, root)
        if args.ray:
            ray_part(args, data, model, root)


if __name__ == "__main__":
    main()
