"""Time every registered attribution method against its forward-pass floor and against the peers.

Not a test: it prints ratios. For each model (ResNet-50 with random weights, the offline
EfficientNet-Lite0) on one 224 px sample photo, and each method, it prints:

* ``wall``: seconds of one ``explain`` call;
* ``evals``: images that went through the whole network (``grad``: of them, those in a pass that was
  back-propagated), and ``tail``: activations that went through only the part after a layer
  (Ablation-CAM's split network);
* ``prec``: the precision the method's forwards ran at (``precision="auto"`` resolved on this machine);
* ``floor``: the time of exactly the method's whole-network passes, at the batch sizes it used, with
  nothing else (:class:`Floor`, measured again right after each method's call): back-propagated
  passes priced at a forward + backward to the input (parameters frozen, as in ``explain``), the
  others at an inference forward in the precision they ran at; ``x floor`` = wall / floor, and
  ``target`` says whether it meets the issue's bound (1.15 for input-space perturbation, 1.2 for
  gradient methods);
* a call under :data:`WARM_BELOW` seconds is timed twice (best kept) so one-off set-up is not timed,
  and one under :data:`SHORT_BELOW` seconds :data:`SHORT_REPEATS` times (peers alike);
* for every installed peer (captum, pytorch-grad-cam, lime, shap) run on identical settings, its wall
  time, its evaluations and ``speed-up`` = peer wall / cnnlens wall. A peer whose estimated time
  (its evaluations at the floor) exceeds ``--peer-budget`` seconds is not run; its estimate is printed.

DeepLIFT runs a traced copy of the model, whose passes the counter (a hook on the model) does not see:
its floor is one forward + backward of its batch (``--deeplift`` prints its ratio at batch 1 and 8, for
the first call of a method object, which traces the model and runs the reference pass, and for later
calls, which reuse both).

``--precision`` instead compares bfloat16 with fp32 for every method that offers ``precision=``:
wall times and the Spearman rank correlation of the maps on the sample photos.

Usage::

    python bench/attribution.py [--models resnet50,efficientnet_lite0] [--methods rise,lime] [--quick]
    python bench/attribution.py --precision --models efficientnet_lite0 [--defaults]
    python bench/attribution.py --deeplift --models resnet50,vgg16,densenet121
"""

from __future__ import annotations

import argparse
import importlib.util
import itertools
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import nn

from cnnlens import capabilities
from cnnlens.attribution import create, get_method, method_names
from cnnlens.attribution.engine.fused import FusedNetwork, fused_network, inference_pass
from cnnlens.attribution.engine.layout import to_memory_format
from cnnlens.attribution.engine.precision import evaluation_context
from cnnlens.attribution.methods.gradient import make_baselines
from cnnlens.attribution.methods.surrogate import superpixels
from cnnlens.data import load_sample
from cnnlens.models import LoadedModel, load_model
from cnnlens.models.hooks import preserved_state

# Identical settings for cnnlens and the peers; modest so the whole bench runs in minutes on 2 cores.
SETTINGS: dict[str, dict[str, Any]] = {
    "occlusion": {"window": 56, "stride": 28},
    "double_occlusion": {"window": 56, "stride": 56, "fixed_window": 112},
    "rise": {"n_masks": 256},
    "lime": {"n_samples": 256, "n_segments": 50},
    "kernelshap": {"n_samples": 256, "n_segments": 50},
    "smoothgrad": {"n_samples": 16},
    "integrated_gradients": {"steps": 16},
}
QUICK: dict[str, dict[str, Any]] = {
    "occlusion": {"window": 112, "stride": 56},
    "double_occlusion": {"window": 112, "stride": 112, "fixed_window": 112},
    "rise": {"n_masks": 64},
    "lime": {"n_samples": 64, "n_segments": 30},
    "kernelshap": {"n_samples": 64, "n_segments": 30},
    "smoothgrad": {"n_samples": 4},
    "integrated_gradients": {"steps": 4},
}
# Score-CAM costs one evaluation per channel: a layer with few channels keeps the bench short.
LAYERS = {
    "resnet50": {"scorecam": "layer1", "ablationcam": "layer4"},
    "efficientnet_lite0": {"scorecam": "blocks.6"},
}
SAMPLES = ("chelsea", "coffee", "rocket", "motorcycle", "grace_hopper")


def tune_malloc() -> bool:
    """Raise glibc's mmap and trim thresholds (what ``cnnlens.cli.common.setup_runtime`` does)."""
    try:
        from cnnlens.runtime import tune_allocator
    except ImportError:
        return False
    return tune_allocator()


# -- counting evaluations ----------------------------------------------------------------------------


def last_leaf(module: nn.Module, x: torch.Tensor) -> nn.Module:
    """The leaf module that runs last in a forward pass (it runs in full and in tail passes)."""
    order: list[nn.Module] = []
    handles = [
        m.register_forward_hook(lambda m, _i, _o: order.append(m))
        for m in module.modules()
        if not list(m.children())
    ]
    try:
        with torch.inference_mode():
            module(x)
    finally:
        for h in handles:
            h.remove()
    return order[-1]


@dataclass
class Count:
    full: int = 0
    grad: int = 0
    total: int = 0
    #: ``(batch, kind)`` of every whole-network pass; kind is ``"grad"``, ``"bf16"`` or ``"fp32"``.
    passes: list[tuple[int, str]] = field(default_factory=list)


class Counter:
    """Counts images through the whole network and through its last layer while inside ``with``."""

    def __init__(self, module: nn.Module, last: nn.Module) -> None:
        self.module, self.last, self.count = module, last, Count()

    def __enter__(self) -> Count:
        self.count = Count()

        def full(_m: nn.Module, args: Any) -> None:
            self.count.full += len(args[0])
            if torch.is_grad_enabled():
                self.count.grad += len(args[0])
            kind = "grad" if torch.is_grad_enabled() else "fp32"
            if kind == "fp32" and torch.is_autocast_enabled("cpu"):
                kind = "bf16"
            self.count.passes.append((len(args[0]), kind))

        def total(_m: nn.Module, args: Any) -> None:
            self.count.total += len(args[0])

        self.handles = [
            self.module.register_forward_pre_hook(full),
            self.last.register_forward_pre_hook(total),
        ]
        return self.count

    def __exit__(self, *exc: object) -> None:
        for h in self.handles:
            h.remove()


#: A call faster than this is run once more and the best time kept: the first call of a method (or
#: peer) at a new batch shape pays one-off set-up costs that would dominate a sub-second measurement.
#: Calls shorter than this (seconds) are repeated :data:`SHORT_REPEATS` times at least.
SHORT_BELOW = 0.25
SHORT_REPEATS = 5
WARM_BELOW = 3.0


def timed(fn: Callable[[], Any], counter: Counter, repeats: int = 1) -> tuple[float, Count, Any]:
    """Best wall time of ``repeats`` calls (the machine is shared), the evaluations of one call.

    A first call under :data:`WARM_BELOW` seconds counts as a warm-up when ``repeats`` is 1, and a
    call under :data:`SHORT_BELOW` seconds is run at least :data:`SHORT_REPEATS` times (best kept): one
    pass of one image (30-100 ms) varies by 30% from call to call here, as the floor's passes do, and
    the floor is a best of several too.
    """
    best = float("inf")
    i = 0
    while True:
        with counter as count:
            start = time.perf_counter()
            out = fn()
            best = min(best, time.perf_counter() - start)
        i += 1
        wanted = max(repeats, SHORT_REPEATS if best < SHORT_BELOW else 1)
        if i >= wanted and (i > 1 or repeats > 1 or best >= WARM_BELOW):
            return best, count, out


# -- the floor --------------------------------------------------------------------------------------


class Floor:
    """Per-pass times of the bare network at every batch shape a method used, measured on demand.

    The floor of a method is the time of exactly its whole-network passes with nothing else: each pass
    ``(batch, kind)`` recorded by :class:`Counter` is priced at the best of ``repeats`` runs of a
    batch of that size (``"grad"``: forward + backward to the input with frozen parameters, as every
    cnnlens gradient method does; ``"bf16"``/``"fp32"``: an inference forward in that precision as the
    methods run it, through the fused network where it applies, looked up once per precision).
    """

    def __init__(self, module: nn.Module, x: torch.Tensor, repeats: int = 3) -> None:
        self.module, self.x, self.repeats = module, x, repeats
        self.seconds: dict[tuple[int, str], float] = {}
        self.nets: dict[str, FusedNetwork | None] = {}

    def fused(self, xb: torch.Tensor, kind: str) -> FusedNetwork | None:
        if kind not in self.nets:
            self.nets[kind] = fused_network(self.module, xb, kind)
        return self.nets[kind]

    def _run(self, batch: int, kind: str) -> None:
        xb = self.x.expand(batch, -1, -1, -1).contiguous()
        if kind == "grad":
            xg = xb.requires_grad_(True)
            with evaluation_context("fp32", xb.device, self.module):
                torch.autograd.grad(self.module(xg)[:, 0].sum(), xg)
            return
        with torch.inference_mode():
            xb = to_memory_format(xb)
            inference_pass(self.module, xb, kind, self.fused(xb, kind))

    def time(self, batch: int, kind: str) -> float:
        """Seconds of one pass of ``batch`` images."""
        if (batch, kind) not in self.seconds:
            with preserved_state(self.module, freeze_parameters=True):
                self._run(batch, kind)  # the first call at a batch shape pays one-off set-up costs
                runs = []
                for _ in range(self.repeats):
                    start = time.perf_counter()
                    self._run(batch, kind)
                    runs.append(time.perf_counter() - start)
            self.seconds[batch, kind] = min(runs)
        return self.seconds[batch, kind]

    def of(self, count: Count) -> float:
        """The floor of the passes ``count`` recorded."""
        return sum(self.time(batch, kind) for batch, kind in count.passes)


# -- peers ------------------------------------------------------------------------------------------


def installed(name: str) -> bool:
    return importlib.util.find_spec(name) is not None


def _segments(x: torch.Tensor, params: dict[str, Any]) -> torch.Tensor:
    return superpixels(x[0], "slic", params["n_segments"])


def peer_runners(
    model: LoadedModel, x: torch.Tensor, target: int, params: dict[str, Any], batch: int, layer: nn.Module
) -> dict[str, dict[str, Callable[[], Any]]]:
    """For each cnnlens method name, the peers' calls on identical settings."""
    module = model.module
    out: dict[str, dict[str, Callable[[], Any]]] = {}
    if installed("captum"):
        import captum.attr as ca

        def occ() -> Any:
            w, s = params["window"], params["stride"]
            return ca.Occlusion(module).attribute(
                x,
                sliding_window_shapes=(3, w, w),
                strides=(3, s, s),
                target=target,
                perturbations_per_eval=batch,
            )

        def shap_captum() -> Any:
            mask = _segments(x, params)[None, None].expand_as(x[:, :1])
            return ca.KernelShap(module).attribute(
                x,
                target=target,
                feature_mask=mask,
                n_samples=params["n_samples"],
                perturbations_per_eval=batch,
            )

        def lime_captum() -> Any:
            mask = _segments(x, params)[None, None].expand_as(x[:, :1])
            return ca.Lime(module).attribute(
                x,
                target=target,
                feature_mask=mask,
                n_samples=params["n_samples"],
                perturbations_per_eval=batch,
            )

        out.setdefault("occlusion", {})["captum"] = occ
        out.setdefault("kernelshap", {})["captum"] = shap_captum
        out.setdefault("lime", {})["captum"] = lime_captum
        out.setdefault("saliency", {})["captum"] = lambda: ca.Saliency(module).attribute(x, target=target)
        out.setdefault("gradxinput", {})["captum"] = lambda: ca.InputXGradient(module).attribute(
            x, target=target
        )
        out.setdefault("guided_backprop", {})["captum"] = lambda: ca.GuidedBackprop(module).attribute(
            x, target=target
        )
        out.setdefault("deconvnet", {})["captum"] = lambda: ca.Deconvolution(module).attribute(
            x, target=target
        )
        out.setdefault("gradcam", {})["captum"] = lambda: ca.LayerGradCam(module, layer).attribute(
            x, target=target
        )
        out.setdefault("guided_gradcam", {})["captum"] = lambda: ca.GuidedGradCam(module, layer).attribute(
            x, target=target
        )
        if "steps" in params:
            out.setdefault("integrated_gradients", {})["captum"] = lambda: ca.IntegratedGradients(
                module
            ).attribute(x, target=target, n_steps=params["steps"], internal_batch_size=batch)
        if "n_samples" in params:
            out.setdefault("smoothgrad", {})["captum"] = lambda: ca.NoiseTunnel(
                ca.Saliency(module)
            ).attribute(
                x,
                target=target,
                nt_type="smoothgrad",
                nt_samples=params["n_samples"],
                nt_samples_batch_size=batch,
            )
    if installed("pytorch_grad_cam"):
        import pytorch_grad_cam as pgc
        from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

        def cam(cls: Any, **kw: Any) -> Callable[[], Any]:
            def run() -> Any:
                with cls(model=module, target_layers=[layer], **kw) as c:
                    return c(input_tensor=x, targets=[ClassifierOutputTarget(target)])

            return run

        out.setdefault("gradcam", {})["grad-cam"] = cam(pgc.GradCAM)
        out.setdefault("gradcampp", {})["grad-cam"] = cam(pgc.GradCAMPlusPlus)
        out.setdefault("layercam", {})["grad-cam"] = cam(pgc.LayerCAM)
        out.setdefault("scorecam", {})["grad-cam"] = cam(pgc.ScoreCAM)
        out.setdefault("ablationcam", {})["grad-cam"] = cam(pgc.AblationCAM, batch_size=batch)
    if installed("lime") and "n_samples" in params:
        from lime import lime_image

        def lime_peer() -> Any:
            mean = torch.tensor(model.preprocessing.mean).view(1, 3, 1, 1)
            std = torch.tensor(model.preprocessing.std).view(1, 3, 1, 1)
            image = (x * std + mean)[0].permute(1, 2, 0).clamp(0, 1).double().numpy()

            def classify(images: np.ndarray) -> np.ndarray:
                # one CHW tensor per image, stacked, as lime's PyTorch tutorial (ToTensor, Normalize)
                # builds the batch: contiguous, as the other peers get it. (A bare permute of lime's
                # NHWC array would hand the model channels_last strides by accident.)
                t = torch.stack([torch.from_numpy(i).permute(2, 0, 1).float() for i in images])
                t = (t - mean[0]) / std[0]
                with torch.inference_mode():
                    return module(t).softmax(1).numpy()

            explainer = lime_image.LimeImageExplainer(random_state=0)
            return explainer.explain_instance(
                image,
                classify,
                labels=(target,),
                top_labels=None,
                num_samples=params["n_samples"],
                batch_size=batch,
                segmentation_fn=lambda img: superpixels(
                    torch.from_numpy(img).permute(2, 0, 1), "slic", params["n_segments"]
                ).numpy(),
            )

        out.setdefault("lime", {})["lime"] = lime_peer
    if installed("shap") and "n_samples" in params:
        import shap

        def shap_peer() -> Any:
            segments = _segments(x, params)
            d = int(segments.max()) + 1
            from cnnlens.attribution.methods.surrogate import fill_image

            base = fill_image(x[0], segments, "mean")

            def f(z: np.ndarray) -> np.ndarray:
                scores = []
                for chunk in torch.from_numpy(z).float().split(batch):
                    m = chunk[:, segments][:, None]
                    with torch.inference_mode():
                        scores.append(module(base + (x[0] - base) * m).softmax(1)[:, target])
                return torch.cat(scores).numpy()

            explainer = shap.KernelExplainer(f, np.zeros((1, d)))
            return explainer.shap_values(np.ones((1, d)), nsamples=params["n_samples"], silent=True)

        out.setdefault("kernelshap", {})["shap"] = shap_peer
    return out


# -- the bench --------------------------------------------------------------------------------------


def method_params(name: str, model_name: str, quick: bool, defaults: bool = False) -> dict[str, Any]:
    """The bench's settings of a method; with ``defaults`` its own (``quick_params`` with ``quick``)."""
    if defaults:
        return dict(get_method(name).quick_params) if quick else {}
    params = dict((QUICK if quick else SETTINGS).get(name, {}))
    cls = get_method(name)
    if cls.uses_layer:
        params["layer"] = LAYERS.get(model_name, {}).get(name)
    return {k: v for k, v in params.items() if k in cls.hyperparameters() and v is not None}


#: The issue's bounds on wall / floor.
TARGETS = {
    **dict.fromkeys(("occlusion", "rise", "lime", "kernelshap", "scorecam"), 1.15),
    **dict.fromkeys(
        (
            "saliency",
            "gradxinput",
            "smoothgrad",
            "integrated_gradients",
            "guided_backprop",
            "deconvnet",
            "gradcam",
            "gradcampp",
            "layercam",
            "guided_gradcam",
        ),
        1.2,
    ),
    "deeplift": 1.3,
}
#: Methods that run a traced copy of the model: their floor is one forward + backward of the batch.
TRACED = ("deeplift",)


def bench_model(model_name: str, methods: list[str], args: argparse.Namespace) -> None:
    model = load_model(model_name, pretrained=model_name == "efficientnet_lite0")
    module = model.module.eval()
    x = model.prepare(load_sample("chelsea"))
    target = int(model.logits(x).argmax())
    floors = Floor(module, x, max(args.repeats, 3))
    b = args.batch_size
    # bf16 is priced where it runs at all (emulated where the CPU has no native bf16 kernels)
    kinds = ("fp32", "bf16", "grad") if capabilities.available("bf16_autocast") else ("fp32", "grad")
    per = {kind: floors.time(b, kind) / b for kind in kinds}
    one = {kind: floors.time(1, kind) for kind in kinds}
    if "bf16" in per:
        native = "" if capabilities.available("bf16_native") else " emulated"
        bf16 = f"bf16{native} {per['bf16'] * 1e3:.1f} ({one['bf16'] * 1e3:.1f})"
    else:
        bf16 = f"bf16 cannot run ({capabilities.probe('bf16_autocast').reason})"
    print(
        f"\n## {model_name}, ms per image at batch {b} (batch 1): forward fp32 {per['fp32'] * 1e3:.1f} "
        f"({one['fp32'] * 1e3:.1f}), {bf16}, "
        f"forward+backward to the input {per['grad'] * 1e3:.1f} ({one['grad'] * 1e3:.1f})"
    )
    header = (
        f"{'method':<22}{'wall s':>8}{'evals':>7}{'grad':>6}{'tail':>7}{'prec':>6}{'floor s':>9}"
        f"{'x floor':>8}{'target':>8}"
    )
    print(header + "   peers (wall s, evals, speed-up)")
    counter = Counter(module, last_leaf(module, x))
    for name in methods:
        cls = get_method(name)
        reason = cls.unsupported(module)
        if reason is not None:
            print(f"{name:<22}skipped: {reason}")
            continue
        params = method_params(name, model_name, args.quick)
        method = create(name, model, batch_size=args.batch_size, **params)
        seconds, count, exp = timed(
            lambda method=method: method.explain(x, target=target), counter, args.repeats
        )
        precision = method.compute_precision(x.device)
        floors.seconds.clear()  # priced right after the call: the machine's speed drifts over a run
        floor = floors.time(len(x), "grad") if name in TRACED else floors.of(count)
        ratio = f"{seconds / floor:8.2f}" if count.total == count.full and floor > 0 else f"{'-':>8}"
        bound = TARGETS.get(name)
        verdict = (
            "-" if bound is None or ratio.strip() == "-" else ("ok" if seconds / floor <= bound else "MISS")
        )
        peers = []
        layer_name = exp.layer or model.default_layer
        layer = dict(module.named_modules())[layer_name]
        runners = peer_runners(
            model,
            x,
            target,
            dict(SETTINGS if not args.quick else QUICK).get(name, {}) | params,
            args.batch_size,
            layer,
        )
        for peer, run in runners.get(name, {}).items():
            estimate = floor if count.total == count.full else count.total * per["fp32"]
            estimate *= per["fp32"] / per[precision]  # the peers run in fp32
            if estimate > args.peer_budget:
                peers.append(f"{peer}: skipped (est. {estimate:.0f} s at the floor)")
                continue
            with torch.enable_grad():
                p_seconds, p_count, _ = timed(run, counter, args.repeats)
            peers.append(f"{peer} {p_seconds:.2f} s, {p_count.full} evals, {p_seconds / seconds:.1f}x")
        print(
            f"{name:<22}{seconds:8.2f}{count.full:7d}{count.grad:6d}{count.total - count.full:7d}"
            f"{precision:>6}{floor:9.2f}{ratio}{verdict:>8}   " + ("; ".join(peers) or "-")
        )


def spearman(a: torch.Tensor, b: torch.Tensor) -> float:
    from scipy.stats import spearmanr

    return float(spearmanr(a.flatten().numpy(), b.flatten().numpy())[0])


def bench_precision(model_name: str, methods: list[str], args: argparse.Namespace) -> None:
    model = load_model(model_name, pretrained=model_name == "efficientnet_lite0")
    x = torch.cat([model.prepare(load_sample(s)) for s in SAMPLES[: args.images]])
    print(f"\n## {model_name}: bf16 vs fp32 on {len(x)} sample photos (min Spearman over photos)")
    print(f"{'method':<22}{'fp32 s':>8}{'bf16 s':>8}{'speed-up':>9}{'spearman':>10}")
    for name in methods:
        if "precision" not in get_method(name).hyperparameters():
            continue
        reason = get_method(name).unsupported(model.module)
        if reason is not None:
            print(f"{name:<22}skipped: {reason}")
            continue
        params = method_params(name, model_name, args.quick, args.defaults)
        times, maps = {}, {}
        if not capabilities.available("bf16_autocast"):
            print(f"{name:<22}skipped: bf16 cannot run here ({capabilities.probe('bf16_autocast').reason})")
            continue
        for precision in ("fp32", "bf16"):
            method = create(name, model, batch_size=args.batch_size, precision=precision, **params)
            start = time.perf_counter()
            maps[precision] = method.explain(x).attributions
            times[precision] = time.perf_counter() - start
        rho = min(spearman(a, b) for a, b in zip(maps["fp32"], maps["bf16"]))
        speed = times["fp32"] / times["bf16"]
        print(f"{name:<22}{times['fp32']:8.2f}{times['bf16']:8.2f}{speed:9.2f}{rho:10.4f}")


def bench_deeplift(model_name: str, args: argparse.Namespace) -> None:
    """DeepLIFT's wall time against the gradient floor (forward + backward of the same batch).

    The first call of a method object traces the model and runs the reference pass (``first s``);
    later calls with the same model and baseline reuse both, so they cost one forward and one backward
    pass. DeepLIFT's later calls and the floor are timed alternately, ``max(repeats, 5)`` times each;
    ``x floor`` is the median of the ratios of each pair (DeepLIFT, then the floor right after it),
    which a drift of the machine's speed within the run moves less than the ratio of the two best
    times (``best x``, also printed). ``cpu x`` is the median pair ratio in process CPU time, which
    waits for a shared core do not inflate; the verdict is on ``x floor``.
    """
    torch.manual_seed(0)
    model = load_model(model_name, pretrained=model_name == "efficientnet_lite0")
    module, x = model.module.eval(), model.prepare(load_sample("chelsea"))
    print(f"\n## DeepLIFT on {model_name} (224 px), wall / (forward + backward to the input of the batch)")
    print(
        f"{'compiled':>9}{'batch':>6}{'first s':>9}{'x floor':>9}{'deeplift s':>12}{'floor s':>9}"
        f"{'best x':>8}{'x floor':>9}{'cpu x':>7}{'target':>8}{'':>6}{'gap / |diff|':>14}"
    )

    def floor_pass(xb: torch.Tensor) -> None:
        xg = xb.detach().requires_grad_(True)
        torch.autograd.grad(module(xg)[:, 0].sum(), xg)

    with preserved_state(module, freeze_parameters=True):  # as every cnnlens gradient method runs it
        for setting, batch in itertools.product(args.compiled.split(","), (1, 8)):
            xb = x.expand(batch, -1, -1, -1).contiguous()
            method = create("deeplift", model, batch_size=batch, compiled=setting)
            floor_pass(xb)
            start = time.perf_counter()
            exp = method.explain(xb)
            first = time.perf_counter() - start
            floor_pass(xb)
            walls: list[tuple[float, float]] = []
            cpus: list[float] = []
            for _ in range(max(args.repeats, 5)):
                start, start_cpu = time.perf_counter(), time.process_time()
                exp = method.explain(xb)
                middle, middle_cpu = time.perf_counter(), time.process_time()
                floor_pass(xb)
                walls.append((middle - start, time.perf_counter() - middle))
                cpus.append((middle_cpu - start_cpu) / (time.process_time() - middle_cpu))
            seconds, floor = min(w[0] for w in walls), min(w[1] for w in walls)
            ratio = float(np.median([a / b for a, b in walls]))
            with torch.inference_mode():
                black = make_baselines(model, "black", xb, 1.0, 0)
                diff = (module(xb) - module(black)).gather(1, exp.targets[:, None])[:, 0]
            relative = float((exp.extras["completeness_gap"] / diff.abs()).max())
            bound = TARGETS["deeplift"]
            verdict = "ok" if ratio <= bound else "MISS"
            print(
                f"{setting:>9}{batch:6d}{first:9.2f}{first / floor:9.2f}{seconds:12.2f}{floor:9.2f}"
                f"{seconds / floor:8.2f}{ratio:9.2f}{float(np.median(cpus)):7.2f}{bound:8.2f}{verdict:>6}"
                f"{relative:14.1e}"
            )


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--models", default="resnet50,efficientnet_lite0")
    parser.add_argument("--methods", default=",".join(method_names()))
    parser.add_argument("--quick", action="store_true", help="fewer samples, masks and windows")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=1, help="report the best of this many runs")
    parser.add_argument(
        "--peer-budget", type=float, default=200.0, help="skip a peer estimated to take longer (s)"
    )
    parser.add_argument("--precision", action="store_true", help="compare bf16 with fp32 instead")
    parser.add_argument("--deeplift", action="store_true", help="DeepLIFT against the gradient floor")
    parser.add_argument(
        "--compiled",
        default="off,on",
        help="DeepLIFT's compiled settings to time, comma-separated (off, on, auto)",
    )
    parser.add_argument("--images", type=int, default=5, help="sample photos for --precision")
    parser.add_argument(
        "--defaults",
        action="store_true",
        help="--precision: each method's own defaults (its quick_params with --quick), not the bench's",
    )
    parser.add_argument("--no-malloc-tuning", action="store_true", help="keep glibc's default thresholds")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    os.environ.setdefault("TQDM_DISABLE", "1")
    tuned = False if args.no_malloc_tuning else tune_malloc()
    print(f"torch {torch.__version__}, {args.threads} threads, malloc tuned: {tuned}, pid {os.getpid()}")
    print(f"CPU: {capabilities.cpu_name()}; {capabilities.summary()}")
    methods = [m.strip() for m in args.methods.split(",") if m.strip()]
    for model_name in [m.strip() for m in args.models.split(",") if m.strip()]:
        if args.deeplift:
            bench_deeplift(model_name, args)
            continue
        (bench_precision if args.precision else bench_model)(model_name, methods, args)


if __name__ == "__main__":
    main()
