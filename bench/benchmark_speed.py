"""Speed of ``cnnlens benchmark``: time per stage, and the dominating stages against their forward floor.

Runs the benchmark of issue 21 (by default 12 images x 3 methods x 6 metrics: the grid pointing game on
the sample photos, ``grid:samples`` with 3 grids of 4 cells, EfficientNet-Lite0, Grad-CAM, occlusion
and RISE at their defaults, deletion, insertion, pointing game, energy pointing game, top-k IoU and
sparseness) through the code path of the CLI (:func:`~cnnlens.evaluation.benchmark.run_benchmark`
with the methods and metrics the CLI builds) into a fresh folder, so every map and metric is computed.

It prints wall and CPU seconds per stage: data (building the grids), each method's attributions, the
metrics (with the queued perturbation passes of deletion and insertion as their own line where the
library has them), and the whole run. For the stages that dominate it prints the forward floor: the
network evaluations the stage needs, timed in the same process as plain batches of that many inputs
through the pass runner at the stage's batch size and precision, and the ratio stage / floor.

The same script measures an older tree (``PYTHONPATH=OLD/src``; the tree before the batched benchmark
has no :class:`~cnnlens.evaluation.benchmark.Stages`, so its stages are timed by wrapping
``Attribution.explain`` and ``Metric.__call__``, and its metric forwards are counted from the metric
settings: every point of every curve, one pass per (image, row, metric)). Run the two alternately on
a shared machine and compare CPU time, which other jobs distort less than wall time.

Run: ``PYTHONPATH=src python bench/benchmark_speed.py [--grids 3] [--methods gradcam,occlusion,rise]
[--metrics deletion,insertion,...] [--no-floor]``.
"""

from __future__ import annotations

import argparse
import inspect
import platform
import tempfile
import time
from collections import defaultdict
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch

from cnnlens.attribution.core.base import Attribution
from cnnlens.attribution.engine.runner import PassRunner
from cnnlens.cli.benchmark import build_metrics
from cnnlens.cli.common import build_methods, progress_bar
from cnnlens.evaluation import benchmark as bm
from cnnlens.evaluation.metrics import Metric
from cnnlens.models import load_model
from cnnlens.models.hooks import preserved_state
from cnnlens.models.loaded import LoadedModel

METHODS = "gradcam,occlusion,rise"
METRICS = "deletion,insertion,pointing_game,energy_pointing,topk_iou,sparseness"
#: The forwards of the queued metrics in one pass per point (trees without ScoreQueue).
QUEUED = ("deletion", "insertion", "topk_drop")


class Clock:
    """Wall and CPU seconds per stage, and the inference rows (count, batch, precision) each ran."""

    def __init__(self) -> None:
        self.wall: dict[str, float] = defaultdict(float)
        self.cpu: dict[str, float] = defaultdict(float)
        self.rows: dict[str, int] = defaultdict(int)
        self.shape: dict[str, tuple[int, str]] = {}
        self.current: list[str] = []

    @contextmanager
    def stage(self, name: str) -> Iterator[None]:
        wall, cpu = time.perf_counter(), time.process_time()
        self.current.append(name)
        try:
            yield
        finally:
            self.current.pop()
            self.wall[name] += time.perf_counter() - wall
            self.cpu[name] += time.process_time() - cpu


@contextmanager
def instrumented(clock: Clock) -> Iterator[None]:
    """Time each method's ``explain`` and each metric call, and count the rows of every inference
    pass of the pass runner (with its batch size and precision) under the stage that ran it."""
    explain, call, infer = Attribution.explain, Metric.__call__, PassRunner._infer

    def timed_explain(self: Attribution, *args: Any, **kwargs: Any) -> Any:
        with clock.stage(f"attribution: {self.name}"):
            return explain(self, *args, **kwargs)

    def timed_call(self: Metric, *args: Any, **kwargs: Any) -> Any:
        if clock.current[-1:] != ["total"]:  # outside the run, or inside another stage
            return call(self, *args, **kwargs)
        with clock.stage(f"metric: {self.name}"):
            return call(self, *args, **kwargs)

    def counted_infer(self: PassRunner, batch: torch.Tensor, precision: str, *a: Any, **k: Any) -> Any:
        if clock.current:
            name = clock.current[-1]  # "total": the queued passes, which Stages counts
            clock.rows[name] += len(batch)
            size, _ = clock.shape.get(name, (0, precision))
            clock.shape[name] = (max(size, len(batch)), precision)
        return infer(self, batch, precision, *a, **k)

    Attribution.explain = timed_explain  # type: ignore[method-assign]
    Metric.__call__ = timed_call  # type: ignore[method-assign]
    PassRunner._infer = counted_infer  # type: ignore[method-assign]
    try:
        yield
    finally:
        Attribution.explain = explain  # type: ignore[method-assign]
        Metric.__call__ = call  # type: ignore[method-assign]
        PassRunner._infer = infer  # type: ignore[method-assign]


def floor_seconds(
    model: LoadedModel, count: int, batch: int, precision: str, side: int
) -> tuple[float, float]:
    """Wall and CPU seconds of ``count`` random inputs through the pass runner's inference pass at
    ``batch`` and ``precision`` (timed on up to 4 batches after a warm-up, scaled to ``count``)."""
    module = model.module
    x = torch.randn(batch, 3, side, side, generator=torch.Generator().manual_seed(0))
    with preserved_state(module, freeze_parameters=True):
        runner = PassRunner(module, model.device, precision=precision)
        runner.scores([x], 0)  # warm-up: builds the fused network
        reps = max(1, min(4, -(-count // batch)))
        wall, cpu = time.perf_counter(), time.process_time()
        for _ in range(reps):
            runner.scores([x], 0)
        scale = count / (reps * batch)
        return (time.perf_counter() - wall) * scale, (time.process_time() - cpu) * scale


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="efficientnet_lite0")
    parser.add_argument("--data", default="grid:samples")
    parser.add_argument("--grids", type=int, default=3)
    parser.add_argument("--methods", default=METHODS)
    parser.add_argument("--metrics", default=METRICS)
    parser.add_argument("--no-floor", action="store_true", help="skip the forward floors")
    args = parser.parse_args()

    clock = Clock()
    model = load_model(args.model)
    with clock.stage("data"):
        images = bm.load_dataset(args.data, model=model, grids=args.grids)
    methods = build_methods(model, args.methods.split(","), {}, None)
    metrics = build_metrics(args.metrics.split(","), {})
    batched = "stages" in inspect.signature(bm.run_benchmark).parameters
    print(
        f"{platform.processor() or platform.machine()}, torch {torch.__version__}, "
        f"{torch.get_num_threads()} threads; {len(images)} images x {len(methods)} methods "
        f"(+{len(bm.REFERENCES)} references) x {len(metrics)} metrics; "
        f"{'batched benchmark (Stages)' if batched else 'per-image benchmark'}"
    )
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp)
        run = bm.BenchmarkRun(model, methods, metrics, out, out / "cache")
        total = len(images) * (len(methods) + len(bm.REFERENCES))
        kwargs: dict[str, Any] = {}
        stages = None
        if batched:
            stages = bm.Stages()
            kwargs["stages"] = stages
        with (
            instrumented(clock),
            progress_bar("benchmark", total, transient=True) as advance,
            clock.stage("total"),
        ):
            bm.run_benchmark(run, images, advance, **kwargs)
    report(clock, stages, model, methods, metrics, len(images), args)


def report(
    clock: Clock,
    stages: Any,
    model: LoadedModel,
    methods: list[Attribution],
    metrics: list[Metric],
    n_images: int,
    args: argparse.Namespace,
) -> None:
    nan = float("nan")
    # name -> [wall, cpu, forwards, batch, precision]
    table: dict[str, list[Any]] = {}
    for name in clock.wall:
        if name.startswith(("attribution", "metric")):
            batch, precision = clock.shape.get(name, (0, "fp32"))
            table[name] = [clock.wall[name], clock.cpu[name], clock.rows.get(name, 0), batch, precision]
    if stages is not None:  # the queued passes, and the queued metrics' own work (wall only)
        if "perturbation passes" in stages.seconds:
            from cnnlens.evaluation.passes import QUEUE_BATCH_SIZE

            table["perturbation passes"] = [
                stages.seconds["perturbation passes"],
                nan,
                stages.forwards,
                QUEUE_BATCH_SIZE,
                "fp32",
            ]
        for name, seconds in stages.seconds.items():
            if name.startswith("metric: ") and name not in table:
                table[name] = [seconds, nan, 0, 0, "fp32"]
    else:  # one pass per (image, row, metric), every point of the curve
        samples = n_images * (len(methods) + len(bm.REFERENCES))
        for m in metrics:
            if m.name in QUEUED and f"metric: {m.name}" in table:
                points = 2 if m.name == "topk_drop" else int(m.get_params()["steps"]) + 1
                batch = min(points, int(m.get_params().get("batch_size", 16)))
                table[f"metric: {m.name}"][2:4] = [points * samples, batch]
    total_wall, total_cpu = clock.wall["total"], clock.cpu["total"]
    print(f"\n{'stage':38} {'wall s':>8} {'cpu s':>8} {'forwards':>9} {'floor s':>8} {'x floor':>8}")
    for name, (wall, cpu, forwards, batch, precision) in sorted(table.items(), key=lambda r: -r[1][0]):
        floor_text = ratio = ""
        if forwards and wall >= 0.1 * total_wall and not args.no_floor:
            fw, _ = floor_seconds(model, forwards, batch, precision, model.preprocessing.crop)
            floor_text, ratio = f"{fw:8.2f}", f"{wall / fw:7.2f}x"
            name = f"{name} (b{batch} {precision})"
        cpu_text = "" if cpu != cpu else f"{cpu:8.2f}"
        print(f"{name:38} {wall:8.2f} {cpu_text:>8} {forwards or '':>9} {floor_text:>8} {ratio:>8}")
    print(f"{'total (run_benchmark)':38} {total_wall:8.2f} {total_cpu:8.2f}")
    print(f"{'data (grids: top-1 of the sources)':38} {clock.wall['data']:8.2f} {clock.cpu['data']:8.2f}")


if __name__ == "__main__":
    main()
