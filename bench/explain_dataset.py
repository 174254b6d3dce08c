"""Benchmark of ``cnnlens explain-dataset``: images per second against the floor; the Ray engine's
overhead. Prints ratios (no timed tests).

1. Local engine: for Grad-CAM, saliency and occlusion on a synthetic 224 px set (``cnnlens data synth``)
   and efficientnet_lite0, the whole pipeline (decoding in worker processes, the batched passes, the
   per-map numbers, the zarr and Parquet writes, the final merge and class means) against the floor:
   the same batched passes (one forward for the predictions, then the method on the whole batch) on
   tensors decoded beforehand, in this process. Target: at most 1.2x the floor.
2. ``--ray``: the Ray engine (local Ray, 1 and 2 actors) against the local engine on the same images:
   start-up (Ray, actors, models) until the first batch is written, then the steady time per batch; the
   numbers behind the scaling model in docs/decisions.md (issue 19).

Run: ``PYTHONPATH=src python bench/explain_dataset.py [--images 2000] [--occlusion-images 64]
[--batch-size 32] [--methods gradcam,saliency,occlusion] [--ray]``.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import torch

from cnnlens import capabilities
from cnnlens.attribution import create
from cnnlens.data.folders import read_data
from cnnlens.data.stream import stream_batches
from cnnlens.data.synthetic import SynthConfig, generate
from cnnlens.dataset_explain import Job, Recipe, explain_dataset
from cnnlens.models import LoadedModel, load_model

TARGET = 1.2
#: Occlusion at 224 px: 56 px windows with stride 28 (49 occluded copies per image), as ``-p``.
OCCLUSION = {"window": 56, "stride": 28}


def floor(model: LoadedModel, method: object, batches: list[torch.Tensor]) -> float:
    """Seconds for the pipeline's passes on pre-decoded batches: predictions, then the method."""
    start = time.perf_counter()
    for x in batches:
        preds = model.logits(x).argmax(1)
        method.explain(x, target=[int(p) for p in preds])  # type: ignore[attr-defined]
    return time.perf_counter() - start


def pipeline(
    job: Job, built: tuple, out: Path, engine: str = "local", workers: int | None = None
) -> list[float]:
    """Timestamps: start, then after each batch written, then the end (merge and class means)."""
    stamps = [time.perf_counter()]
    explain_dataset(
        job,
        out,
        built=built,
        engine=engine,
        advance=lambda n: stamps.append(time.perf_counter()),
        ray_workers=workers,
    )
    stamps.append(time.perf_counter())
    return stamps


def local_part(args: argparse.Namespace, manifest: Path, model: LoadedModel, root: Path) -> None:
    head = f"{'method':10} {'images':>6} {'floor img/s':>12} {'pipeline img/s':>15} {'ratio':>6}"
    print(f"{head}  (median of {args.reps} floor/pipeline pairs) target <= {TARGET}x")
    for name in args.methods.split(","):
        count = args.occlusion_images if name == "occlusion" else args.images
        method = create(name, model, **(OCCLUSION if name == "occlusion" else {}))
        samples = read_data(manifest).samples[:count]
        sub = root / f"{name}.csv"
        rows = "".join(f"{s.path},{'circle' if s.label == 0 else 'triangle'}\n" for s in samples)
        sub.write_text("path,label\n" + rows)
        batches = [
            b.inputs
            for b in stream_batches(samples, model.preprocessing, batch_size=args.batch_size, workers=0)
        ]
        floor(model, method, batches[:1])  # warm-up
        job = Job(
            data=str(sub), recipe=Recipe.of([method], model="efficientnet_lite0"), batch_size=args.batch_size
        )
        pairs = []
        for rep in range(args.reps):  # alternated, so a change in the machine's load hits both
            t_floor = floor(model, method, batches)
            stamps = pipeline(job, (model, [method]), root / f"store-{name}-{rep}")
            pairs.append((t_floor, stamps[-1] - stamps[0]))
        t_floor, t_pipe = statistics.median(f for f, _ in pairs), statistics.median(p for _, p in pairs)
        ratio = statistics.median(p / f for f, p in pairs)
        verdict = "PASS" if ratio <= TARGET else "FAIL"
        print(f"{name:10} {count:6d} {count / t_floor:12.2f} {count / t_pipe:15.2f} {ratio:6.2f}  {verdict}")
        del batches


def ray_part(args: argparse.Namespace, manifest: Path, model: LoadedModel, root: Path) -> None:
    import ray

    method = create("gradcam", model)
    samples = read_data(manifest).samples[: args.ray_images]
    sub = root / "ray.csv"
    sub.write_text(
        "path,label\n" + "".join(f"{s.path},{'circle' if s.label == 0 else 'triangle'}\n" for s in samples)
    )
    recipe = Recipe.of([method], model="efficientnet_lite0")
    job = Job(data=str(sub), recipe=recipe, batch_size=args.ray_batch_size)
    local = pipeline(job, (model, [method]), root / "ray-local")
    start = time.perf_counter()
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, logging_level="ERROR")
    t_init = time.perf_counter() - start
    print(f"\nRay engine, Grad-CAM, {len(samples)} images in batches of {args.ray_batch_size}", end="")
    print(f"; ray.init: {t_init:.1f} s")
    print(f"{'engine':14} {'to 1st batch s':>15} {'steady s/batch':>15} {'end s':>7} {'total s':>8}")

    def show(label: str, s: list[float]) -> None:
        steady = (s[-2] - s[1]) / max(1, len(s) - 3)
        print(f"{label:14} {s[1] - s[0]:15.2f} {steady:15.3f} {s[-1] - s[-2]:7.2f} {s[-1] - s[0]:8.2f}")

    show("local", local)
    try:
        for workers in (1, 2):
            show(
                f"ray, {workers} actor{'s' * (workers > 1)}",
                pipeline(job, (model, [method]), root / f"ray-{workers}", "ray", workers),
            )
    finally:
        ray.shutdown()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--images", type=int, default=2000)
    parser.add_argument("--occlusion-images", type=int, default=64)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--methods", default="gradcam,saliency,occlusion")
    parser.add_argument("--reps", type=int, default=3, help="floor/pipeline pairs per method")
    parser.add_argument("--ray", action="store_true", help="also the Ray engine")
    parser.add_argument("--ray-images", type=int, default=128)
    parser.add_argument("--ray-batch-size", type=int, default=8)
    args = parser.parse_args()
    print(f"CPU: {capabilities.cpu_name()}; torch threads: {torch.get_num_threads()}")
    model = load_model("efficientnet_lite0")
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        per_class = (max(args.images, args.occlusion_images, args.ray_images) + 1) // 2
        start = time.perf_counter()
        synth = SynthConfig(classes=2, per_class=per_class, size=224)
        manifest = generate(root / "shapes", synth).parent / "manifest.csv"
        print(f"synthetic set: {2 * per_class} images at 224 px ({time.perf_counter() - start:.0f} s)")
        local_part(args, manifest, model, root)
        if args.ray:
            ray_part(args, manifest, model, root)


if __name__ == "__main__":
    main()
