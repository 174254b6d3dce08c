"""Benchmark of the layer atlas and of channel Shapley values; prints ratios (no timed tests).

1. The atlas over all selected layers against one single-layer attribution with the same method (the
   issue's target: at most 1.5x), against one call per layer (cnnlens' own single-layer method and,
   where installed, Captum's LayerGradientXActivation / LayerIntegratedGradients).
2. Channel Shapley values on efficientnet_lite0's last conv layer: time per permutation with only the
   network after the layer re-run, against a full-network re-run per coalition.

Run: ``PYTHONPATH=src python bench/layers.py [--reps 5] [--vgg] [--device cuda]``.
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable

import torch

from cnnlens.attribution import create
from cnnlens.attribution.atlas import layer_atlas
from cnnlens.attribution.channels import CoalitionGame, channel_shapley, permutation_chain
from cnnlens.attribution.engine import suffix_runner
from cnnlens.attribution.hooks import preserved_state
from cnnlens.attribution.layer import select_layers
from cnnlens.data import load_sample
from cnnlens.models import LoadedModel, load_model


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


def captum_per_layer(
    model: LoadedModel, x: torch.Tensor, layers: list[str], method: str, steps: int
) -> float:
    """One Captum call per layer, summed (None when Captum is not installed)."""
    from captum.attr import LayerGradientXActivation, LayerIntegratedGradients

    module = model.module
    target = int(model.logits(x).argmax())
    total = 0.0
    with preserved_state(module, freeze_parameters=True):
        for name in layers:
            layer = module.get_submodule(name)
            if method == "gradxact":
                algo: object = LayerGradientXActivation(module, layer)
                kwargs: dict[str, object] = {}
            else:
                algo = LayerIntegratedGradients(module, layer)
                kwargs = {"n_steps": steps + 1, "internal_batch_size": steps + 1}
            start = time.perf_counter()
            algo.attribute(x, target=target, **kwargs)  # type: ignore[attr-defined]
            total += time.perf_counter() - start
    return total


def atlas_rows(
    model: LoadedModel, x: torch.Tensor, label: str, reps: int, steps: int, methods: tuple[str, ...]
) -> None:
    layers = list(select_layers(model.module))
    first = layers_in_order(model, x, layers)[0]
    print(f"\n## {label}: {len(layers)} atlas layers ({', '.join(layers[:3])}, ...), first to run: {first}")
    print("method    atlas_s  single_first_s  single_default_s  atlas/single_first  per_layer_calls_s  "
          "per_layer/atlas  captum_per_layer_s  captum/atlas")  # fmt: skip
    rows = {"gradxact": ("layer_gradxact", {}), "ig": ("layer_ig", {"steps": steps})}
    for method in methods:
        single, params = rows[method]
        atlas = timed(lambda m=method, p=params: layer_atlas(model, x, method=m, layers=layers, **p), reps)
        one_first = timed(lambda s=single, p=params: create(s, model, layer=first, **p).explain(x), reps)
        one_default = timed(lambda s=single, p=params: create(s, model, **p).explain(x), reps)
        per_layer = sum(
            timed(lambda s=single, n=n, p=params: create(s, model, layer=n, **p).explain(x), 1)
            for n in layers
        )
        try:
            captum = captum_per_layer(model, x, layers, method, steps)
            captum_text = f"{captum:18.3f}  {captum / atlas:12.2f}"
        except ImportError:
            captum_text = f"{'not installed':>18}  {'-':>12}"
        print(
            f"{method:8} {atlas:8.3f}  {one_first:14.3f}  {one_default:16.3f}  {atlas / one_first:18.2f}  "
            f"{per_layer:17.3f}  {per_layer / atlas:15.2f}  {captum_text}"
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
            timings[mode] = timed(lambda g=game: g(masks), 1) / len(masks)
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
    if args.part in ("all", "atlas"):
        atlas_rows(lite0, x, "efficientnet_lite0 224 px, chelsea", args.reps, args.steps, ("gradxact", "ig"))
    if args.vgg:
        vgg = load_model("vgg19", pretrained=False, device=args.device)
        x_vgg = vgg.prepare(load_sample("chelsea"))
        atlas_rows(vgg, x_vgg, "vgg19 (random) 224 px", max(1, args.reps // 2), args.steps, ("gradxact",))
    if args.part in ("all", "shapley"):
        shapley_rows(lite0, x, "conv_head", args.permutations, args.coalitions)


if __name__ == "__main__":
    main()
