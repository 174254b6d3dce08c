"""Benchmark of the streaming probing passes against the forward-only floor; prints ratios.

For each model, the same pre-decoded images (seeded noise at the model's input size, so decoding is
out of both sides) go through:

- the floor: the batches through the model, no probing work (eval mode, inference mode);
- ``patches``: :func:`~cnnlens.probing.top_patches.top_activations` for every unit of a layer (the
  running top-k pass);
- ``embed``: :func:`~cnnlens.probing.features.extract_features` (global-average-pooled features);
- ``neighbors``: :func:`~cnnlens.probing.features.nearest_neighbours` (feature and pixel running top-k).

Each is timed ``--reps`` times, interleaved; the medians of wall and CPU time are reported with their
ratios to the floor's, and PASS/FAIL against the issue's target (within 1.2x) is judged on CPU time,
which other jobs on a shared machine distort far less than wall time. The winners' crop pass of ``patches``
(16 units, 9 images each) and each 2-D map method on the embed features are timed once, for scale.

Run: ``PYTHONPATH=src python bench/probing.py [--images 2000] [--reps 3] [--models tinycnn,efficientnet_lite0]
[--lite-size 128] [--maps tsne,umap,pca]``.
"""

from __future__ import annotations

import argparse
import platform
import statistics
import time
from collections.abc import Callable

import torch

from cnnlens.models import LoadedModel, load_model
from cnnlens.models.hooks import preserved_state
from cnnlens.probing.embedding import embed_2d
from cnnlens.probing.features import extract_features, nearest_neighbours
from cnnlens.probing.stream import batches_of
from cnnlens.probing.top_patches import crop_patches, top_activations

#: The issue's target: a streaming pass costs at most this times the forward-only floor.
TARGET = 1.2
#: (model, patches layer, feature layer)
LAYERS = {"tinycnn": ("features.1", "features.2"), "efficientnet_lite0": ("blocks.4", "bn2")}


def floor(model: LoadedModel, x: torch.Tensor, batch_size: int) -> None:
    with preserved_state(model.module), torch.inference_mode():
        for b in batches_of(x, batch_size=batch_size):
            model.module(b.inputs)


def once(fn: Callable[[], object]) -> tuple[float, float]:
    """Wall and CPU seconds of one call (CPU time is what a busy shared machine distorts least)."""
    wall, cpu = time.perf_counter(), time.process_time()
    fn()
    return time.perf_counter() - wall, time.process_time() - cpu


def bench_model(name: str, size: int | None, args: argparse.Namespace) -> None:
    model = load_model(name, pretrained=name != "tinycnn")
    side = size or model.preprocessing.crop
    g = torch.Generator().manual_seed(0)
    x = torch.randn(args.images, 3, side, side, generator=g)
    query = torch.randn(1, 3, side, side, generator=g)
    patch_layer, feat_layer = LAYERS[name]
    bs = args.batch_size
    runs: dict[str, Callable[[], object]] = {
        "floor (forward only)": lambda: floor(model, x, bs),
        f"patches {patch_layer} (all units)": lambda: top_activations(
            model, batches_of(x, batch_size=bs), patch_layer
        ),
        f"embed features {feat_layer}": lambda: extract_features(
            model, batches_of(x, batch_size=bs), feat_layer
        ),
        f"neighbors {feat_layer}": lambda: nearest_neighbours(
            model, query, batches_of(x, batch_size=bs), feat_layer
        ),
    }
    for fn in runs.values():  # warm-up
        fn()
    times: dict[str, list[tuple[float, float]]] = {k: [] for k in runs}
    for _ in range(args.reps):
        for k, fn in runs.items():
            times[k].append(once(fn))
    floor_key = "floor (forward only)"
    base = [statistics.median(t[i] for t in times[floor_key]) for i in (0, 1)]
    print(f"\n{name} at {side} px, {args.images} images, batch {bs}, {args.reps} reps (medians):")
    print(f"  {'pass':38s} {'wall s':>8s} {'img/s':>8s} {'wall x':>7s} {'cpu s':>8s} {'cpu x':>6s}")
    for k, ts in times.items():
        wall, cpu = (statistics.median(t[i] for t in ts) for i in (0, 1))
        verdict = "" if k == floor_key else ("PASS" if cpu / base[1] <= TARGET else "FAIL")
        print(
            f"  {k:38s} {wall:8.2f} {args.images / wall:8.1f} {wall / base[0]:6.2f}x "
            f"{cpu:8.2f} {cpu / base[1]:5.2f}x  {verdict}"
        )
    found = top_activations(model, batches_of(x, batch_size=bs), patch_layer)
    units = found.strongest(16)
    t, _ = once(
        lambda: crop_patches(
            model, found, units, lambda order: batches_of(x, batch_size=bs, order=order), lambda v: v.numpy()
        )
    )
    print(
        f"  winners' crop pass (16 units x 9): {t:.2f} s wall ({t / base[0]:.2f}x the floor over all images)"
    )
    if args.maps:
        feats = extract_features(model, batches_of(x, batch_size=bs), feat_layer).values.numpy()
        for method in args.maps.split(","):
            t, _ = once(lambda m=method: embed_2d(feats, m))  # type: ignore[misc]
            print(f"  2-D map {method:5s} of {feats.shape[0]} x {feats.shape[1]} features: {t:.1f} s")


def cpu_name() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            return next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        return platform.processor() or platform.machine()


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--images", type=int, default=2000)
    p.add_argument("--reps", type=int, default=3)
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--models", default="tinycnn,efficientnet_lite0")
    p.add_argument(
        "--lite-size", type=int, default=128, help="input side for efficientnet_lite0 (default 128)"
    )
    p.add_argument("--maps", default="", help="also time these 2-D map methods, e.g. tsne,umap,pca")
    args = p.parse_args()
    torch.manual_seed(0)
    print(f"{cpu_name()}, torch {torch.__version__}, {torch.get_num_threads()} threads")
    for name in args.models.split(","):
        bench_model(name, args.lite_size if name == "efficientnet_lite0" else None, args)


if __name__ == "__main__":
    main()
