"""Benchmark of the layer atlas and of channel Shapley values; prints ratios (no timed tests).

1. The atlas over all selected layers, for each of its four methods (gradxact, ig, gradshap, gradcam),
   against one single-layer attribution with the same method and settings, at the model's default
   (CAM) layer and at the layer nearest the input, with PASS/FAIL against the issue's target (at most
   1.5x); and against one call per layer (cnnlens' own single-layer method and, where installed,
   Captum's LayerGradientXActivation / LayerIntegratedGradients / LayerGradientShap / LayerGradCam).
2. Channel Shapley values on efficientnet_lite0's last conv layer: time per permutation with only the
   network after the layer re-run, against a full-network re-run per coalition.

Run: ``PYTHONPATH=src python bench/layers.py [--reps 5] [--part atlas] [--methods ig,gradcam] [--vgg]
[--no-per-layer] [--device cuda]``.
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable
from functools import partial
from typing import Any

import torch

from cnnlens.attribution.engine.split import suffix_runner
from cnnlens.attribution.methods.layer import select_layers
from cnnlens.data import load_sample
from cnnlens.models import LoadedModel, load_model
from cnnlens.models.hooks import preserved_state
from cnnlens.probing.atlas import ATLAS_METHODS, layer_atlas
from cnnlens.probing.channels import CoalitionGame, channel_shapley, permutation_chain


def timed(fn: Callable[[], object], reps: int) -> float:
    """Median wall time of ``reps`` calls after one warm-up call."""
    fn()
    times = []
    for _ in range(reps):
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        start = time.perf_counter()
        fn()
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


#: The issue's target: the atlas over all layers costs at most this times one single-layer attribution.
ATLAS_TARGET = 1.5


def method_params(steps: int, samples: int) -> dict[str, dict[str, Any]]:
    """Each atlas method's hyper-parameters, the same for the atlas, the single layer and Captum."""
    return {"gradxact": {}, "ig": {"steps": steps}, "gradshap": {"n_samples": samples}, "gradcam": {}}


def captum_call(
    model: LoadedModel, layer: torch.nn.Module, method: str, params: dict[str, Any]
) -> tuple[Any, dict[str, Any]]:
    """Captum's layer method matching ``method`` and the keyword arguments of its ``attribute``."""
    from captum.attr import (  # type: ignore[import-untyped]
        LayerGradCam,
        LayerGradientShap,
        LayerGradientXActivation,
        LayerIntegratedGradients,
    )

    module = model.module
    if method == "gradxact":
        return LayerGradientXActivation(module, layer), {}
    if method == "ig":
        n = int(params["steps"]) + 1
        return LayerIntegratedGradients(module, layer), {"n_steps": n, "internal_batch_size": n}
    if method == "gradshap":
        impl = LayerGradientShap(module, layer)
        return impl, {"n_samples": params["n_samples"], "stdevs": 0.0}
    return LayerGradCam(module, layer), {}


def captum_per_layer(
    model: LoadedModel, x: torch.Tensor, layers: list[str], method: str, params: dict[str, Any]
) -> float:
    """One Captum call per layer, summed (raises ImportError when Captum is not installed)."""
    from cnnlens.attribution.methods.layer import LayerGradientShap as OurGradientShap

    module = model.module
    target = int(model.logits(x).argmax())
    extra: dict[str, object] = {}
    if method == "gradshap":  # the same baselines as cnnlens' default set
        extra["baselines"] = OurGradientShap(model, **params).baseline_set(x)
    total = 0.0
    with preserved_state(module, freeze_parameters=True):
        for name in layers:
            algo, kwargs = captum_call(model, module.get_submodule(name), method, params)
            start = time.perf_counter()
            algo.attribute(x, target=target, **kwargs, **extra)
            total += time.perf_counter() - start
    return total


def single(
    model: LoadedModel, x: torch.Tensor, method: str, layer: str, params: dict[str, Any]
) -> Callable[[], object]:
    """One single-layer attribution with the atlas method's own class and settings."""
    return lambda: ATLAS_METHODS[method](model, layer=layer, **params).explain(x)


def verdict(ratio: float) -> str:
    return "PASS" if ratio <= ATLAS_TARGET else "FAIL"


def atlas_rows(
    model: LoadedModel,
    x: torch.Tensor,
    label: str,
    reps: int,
    params: dict[str, dict[str, Any]],
    methods: tuple[str, ...],
    per_layer_calls: bool = True,
) -> None:
    """Time the atlas of each method against one single-layer attribution with the same method.

    The single layer is the model's default (CAM) layer, near the output, and the layer nearest the
    input (the first to run: its backward pass crosses the whole network, as the atlas's does).
    """
    layers = list(select_layers(model.module))
    first = layers_in_order(model, x, layers)[0]
    default = model.layer(None)[0]
    print(
        f"\n## {label}: {len(layers)} atlas layers ({', '.join(layers[:3])}, ...); single layer: default "
        f"(CAM) {default}, nearest the input {first}; target atlas/single <= {ATLAS_TARGET}x"
    )
    print("method    atlas_s  single_default_s  atlas/default       single_first_s  atlas/first         "
          "per_layer_calls_s  per_layer/atlas  captum_per_layer_s  captum/atlas")  # fmt: skip
    for method in methods:
        p = params[method]
        atlas = timed(partial(layer_atlas, model, x, method=method, layers=layers, **p), reps)
        one_default = timed(single(model, x, method, default, p), reps)
        one_first = timed(single(model, x, method, first, p), reps)
        if per_layer_calls:
            per_layer = sum(timed(single(model, x, method, n, p), 1) for n in layers)
            per_layer_text = f"{per_layer:17.3f}  {per_layer / atlas:15.2f}"
        else:
            per_layer_text = f"{'skipped':>17}  {'-':>15}"
        try:
            captum = captum_per_layer(model, x, layers, method, p)
            captum_text = f"{captum:18.3f}  {captum / atlas:12.2f}"
        except ImportError:
            captum_text = f"{'not installed':>18}  {'-':>12}"
        by_default, by_first = atlas / one_default, atlas / one_first
        print(
            f"{method:8} {atlas:8.3f}  {one_default:16.3f}  {by_default:6.2f} {verdict(by_default)}  "
            f"{one_first:18.3f}  {by_first:6.2f} {verdict(by_first)}  {per_layer_text}  {captum_text}"
        )


def layers_in_order(model: LoadedModel, x: torch.Tensor, layers: list[str]) -> list[str]:
    return layer_atlas(model, x, layers=layers).names()


def shapley_rows(model: LoadedModel, x: torch.Tensor, layer: str, permutations: int, coalitions: int) -> None:
    module = model.module
    print(f"\n## channel Shapley values, {model.name} layer {layer}")
    result = channel_shapley(model, x, layer=layer, samples=permutations)
    c = result.values.numel()
    per_perm = result.seconds / result.permutations
    print(
        f"channels {c}; {result.permutations} permutations, {result.evaluations} coalitions in "
        f"{result.seconds:.2f} s (suffix mode {result.suffix_mode}, "
        f"max stderr {float(result.stderr.max()):.2g}, "
        f"sum {float(result.values.sum()):.4f} = v(all) - v(none) {result.full - result.empty:.4f})"
    )
    with preserved_state(module, freeze_parameters=True):
        masks = torch.cat([permutation_chain(torch.randperm(c)) for _ in range(2)])[:coalitions]
        timings = {}
        for mode in ("fx", "full"):
            runner = suffix_runner(module, layer, x, mode=mode)
            game = CoalitionGame(runner, torch.zeros_like(runner.activation), result.target, 64)
            timings[mode] = timed(partial(game, masks), 1) / len(masks)
    full_perm, suffix_perm = timings["full"] * (c - 1), timings["fx"] * (c - 1)
    print("suffix_s_per_coalition  full_s_per_coalition  full/suffix  suffix_s_per_permutation  "
          "end_to_end_s_per_permutation  full_rerun_s_per_permutation  full_rerun/end_to_end")  # fmt: skip
    print(
        f"{timings['fx']:22.6f}  {timings['full']:20.6f}  {timings['full'] / timings['fx']:11.1f}  "
        f"{suffix_perm:24.4f}  {per_perm:28.4f}  {full_perm:28.2f}  {full_perm / per_perm:21.1f}"
    )
    print("(end to end: channel_shapley's wall time, prefix run and fx trace included, per permutation)")
    print(f"(full re-run timed on {len(masks)} coalitions and scaled to the {c - 1} of one permutation)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--reps", type=int, default=5)
    parser.add_argument("--steps", type=int, default=8, help="IG steps (default 8)")
    parser.add_argument("--samples", type=int, default=8, help="GradientSHAP samples (default 8)")
    parser.add_argument(
        "--methods",
        default="gradxact,ig,gradshap,gradcam",
        help="atlas methods to time (default: all four)",
    )
    parser.add_argument(
        "--no-per-layer", action="store_true", help="skip the one-call-per-layer column (the slowest part)"
    )
    parser.add_argument("--threads", type=int, default=1, help="1: OpenMP spin-waits on a busy machine")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--vgg", action="store_true", help="also VGG19 (random weights, 224 px, gradxact)")
    parser.add_argument("--part", choices=("all", "atlas", "shapley", "none"), default="all")
    parser.add_argument("--permutations", type=int, default=8)
    parser.add_argument("--coalitions", type=int, default=128, help="coalitions timed for the full re-run")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    print(f"torch {torch.__version__}, {args.threads} threads, device {args.device}, median of {args.reps}")
    lite0 = load_model("efficientnet_lite0", device=args.device)
    x = lite0.prepare(load_sample("chelsea"))
    params = method_params(args.steps, args.samples)
    methods = tuple(m.strip() for m in args.methods.split(",") if m.strip())
    unknown = [m for m in methods if m not in ATLAS_METHODS]
    if unknown:
        parser.error(f"unknown atlas methods {unknown}; choose from {', '.join(ATLAS_METHODS)}")
    per_layer = not args.no_per_layer
    if args.part in ("all", "atlas"):
        label = "efficientnet_lite0 224 px, chelsea"
        atlas_rows(lite0, x, label, args.reps, params, methods, per_layer)
    if args.vgg:
        vgg = load_model("vgg19", pretrained=False, device=args.device)
        x_vgg = vgg.prepare(load_sample("chelsea"))
        reps = max(1, args.reps // 2)
        atlas_rows(vgg, x_vgg, "vgg19 (random) 224 px", reps, params, ("gradxact",), per_layer)
    if args.part in ("all", "shapley"):
        shapley_rows(lite0, x, "conv_head", args.permutations, args.coalitions)


if __name__ == "__main__":
    main()
