"""DeepLIFT (rescale rule) and DeepLIFT-SHAP, exact on stock networks.

DeepLIFT explains ``f(x) - f(x')`` for a reference ``x'``: each operation passes back multipliers
whose contributions sum to its own output difference, so the attributions ``(x - x') * m`` sum to
``f(x) - f(x')`` (completeness). Written as a modified gradient (Ancona et al. 2018), it is one
reference pass (no autograd; one image when the reference is shared, as ``"black"`` is, and kept by the
method object for its later calls: :class:`ReferenceCache`), one forward and one backward pass, run on
the traced functional copy of
:class:`~cnnlens.attribution.engine.ruled_graph.RuledGraph`: the user's model is never hooked or
changed, and in-place, reused activations (ResNet's Bottleneck calls one ReLU three times), in-place
residual adds and concatenations need nothing special. The rules, each a
:class:`~cnnlens.attribution.engine.rules.Rule`:

* :class:`Rescale` on elementwise activations (ReLU, ReLU6, SiLU, GELU, Hardswish, sigmoid, tanh...,
  and timm's ``BatchNormAct2d``, an elementwise function in eval mode that timm keeps out of traces):
  multiplier ``(y - y') / (x - x')``, the local gradient where ``|x - x'| <= 1e-6``.
* :class:`MaxPoolSplit` on max pooling, overlapping windows included (ResNet's 3x3/2 stem pool): each
  window's output difference ``dy`` goes to its inputs in proportion to their squared differences,
  ``dx_i * dx_i * dy / sum_window(dx^2)``: exact for every window (it sums to ``dy``), bounded
  (``|dy| <= max |dx_i|``, so every multiplier is at most 1 in size) and zero for inputs that did not
  change. The gradient of the max pool (all of ``dy`` to the argmax) is not exact, and Captum's
  unpooling rule loses the overlaps; that is why the peers miss completeness on a ResNet.
* :class:`BilinearSplit` on products of two input-dependent tensors (squeeze-excitation ``x * s``,
  attention's ``q @ k``): ``f(a, b) - f(a', b') = f(a - a', (b + b') / 2) + f((a + a') / 2, b - b')``,
  exact for every bilinear ``f`` (the Shapley split of the two operands).

Every linear operation (convolution, batch norm in eval mode, linear, average pooling, sums,
concatenation, reshapes) keeps its ordinary gradient, which is exact for differences. Other
nonlinear operations (layer norm, softmax, a division) keep their gradient too; completeness then holds
only approximately, and ``extras["completeness_gap"]`` says by how much.
"""

from __future__ import annotations

import logging
import math
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.modules.utils import _pair

from cnnlens import capabilities
from cnnlens.attribution.core.base import Attributed, ModelLike, OnePass, TargetPicker
from cnnlens.attribution.core.registry import register
from cnnlens.attribution.engine.kernels import Kernel, clamp_bounds, clamp_kernel
from cnnlens.attribution.engine.ruled_graph import Product, RuledGraph
from cnnlens.attribution.engine.rules import Call, Grads, Rule
from cnnlens.attribution.methods.gradient import check_baseline, make_baselines, pixel_bounds, seeded
from cnnlens.errors import InputError
from cnnlens.validation import check_positive_int

logger = logging.getLogger(__name__)

#: Differences at or below this size use the local gradient instead of the ratio of differences.
TINY = 1e-6

ACTIVATIONS: tuple[type[nn.Module], ...] = (
    nn.ReLU,
    nn.ReLU6,
    nn.LeakyReLU,
    nn.PReLU,
    nn.ELU,
    nn.CELU,
    nn.SELU,
    nn.GELU,
    nn.SiLU,
    nn.Mish,
    nn.Softplus,
    nn.Hardswish,
    nn.Hardsigmoid,
    nn.Hardtanh,
    nn.Sigmoid,
    nn.Tanh,
)

#: Activations whose output is their input or a constant on each piece.
CLAMPS: tuple[type[nn.Module], ...] = (nn.ReLU, nn.ReLU6, nn.Hardtanh)


def _norm_act_kinds() -> tuple[type[nn.Module], ...]:
    """timm's batch norm + activation modules, which timm keeps out of fx traces: in eval mode each is
    an elementwise function of its input, so the rescale rule applies to it as a whole."""
    try:
        from timm.layers import BatchNormAct2d, FrozenBatchNormAct2d
    except ImportError:
        return ()
    return (BatchNormAct2d, FrozenBatchNormAct2d)


def _reference(call: Call) -> tuple[tuple[torch.Tensor, ...], torch.Tensor]:
    if call.reference is None:
        raise RuntimeError("a DeepLIFT rule ran without its reference pass")
    return call.reference


def _vjp(fn: Any, at: torch.Tensor, grad: torch.Tensor) -> torch.Tensor:
    """``grad`` pulled back through ``fn`` at ``at``."""
    with torch.enable_grad():
        point = at.detach().requires_grad_(True)
        return torch.autograd.grad(fn(point), point, grad)[0]


class Rescale(Rule):
    """DeepLIFT's rescale rule: the multiplier of an elementwise activation is ``dy / dx``."""

    kinds = ACTIVATIONS + _norm_act_kinds()
    needs_reference = True

    def kernel(self, kind: type, op: Any) -> Kernel | None:
        """One compiled backward pass (``grad * m``, ``m`` never stored) for a clamp with known bounds."""
        bounds = clamp_bounds(kind, op) if issubclass(kind, CLAMPS) else None
        return None if bounds is None else clamp_kernel(*bounds, compiled=True)

    def multiplier(self, call: Call) -> torch.Tensor:
        """``(y - y') / (x - x')``, and the local gradient where ``|x - x'| <= TINY``.

        Computed in the forward pass (the backward pass is then one product): two differences and a
        division into fresh tensors updated in place, then one read-only check; only a layer that has
        a small difference pays for a mask. A clamp (ReLU, ReLU6, Hardtanh) needs no threshold: its
        output is its input or a constant, so ``y - y'`` is ``x - x'`` or 0 to the bit when ``x`` and
        ``x'`` are on the same piece, and a ratio in [0, 1] otherwise; only ``x == x'`` (0 / 0) takes the
        local gradient. Other activations cancel in ``y - y'`` as ``x - x'`` shrinks: below TINY
        they take the local gradient.
        """
        (x0,), y0 = _reference(call)
        x = call.inputs[0]
        dx = x - x0
        m = (call.output - y0).div_(dx)
        if issubclass(call.kind, CLAMPS):
            if not bool(m.sum().isnan()):  # m is in [0, 1] or NaN: the sum cannot overflow
                return m
            flat = dx == 0
        elif float(torch.linalg.vector_norm(dx, ord=-math.inf)) > TINY:
            return m
        else:
            flat = dx.abs_() <= TINY
        # elementwise: the vector-Jacobian product with ones is the derivative
        relu = call.kind is nn.ReLU
        local = (x > 0).to(m.dtype) if relu else _vjp(call.compute, x, torch.ones_like(x))
        return torch.where(flat, local, m)

    def backward(self, grad: torch.Tensor, call: Call) -> Grads:
        return (grad * self.multiplier(call),)


class MaxPoolSplit(Rule):
    """Max pooling: each window's output difference split over its inputs by squared difference."""

    kinds = (nn.MaxPool2d,)
    needs_reference = True

    def backward(self, grad: torch.Tensor, call: Call) -> Grads:
        (x0,), y0 = _reference(call)
        pool = call.op
        x = call.inputs[0]
        if not isinstance(pool, nn.MaxPool2d) or pool.dilation not in (1, (1, 1)):
            return (_vjp(call.compute, x, grad),)  # not exact: the gap will say so
        dx, dy = x - x0, call.output - y0
        kernel, stride, padding = (_pair(v) for v in (pool.kernel_size, pool.stride, pool.padding))
        norm = F.avg_pool2d(dx.square(), kernel, stride, padding, pool.ceil_mode, True, divisor_override=1)
        share = torch.where(norm > 1e-30, (grad * dy).div_(norm.clamp(min=1e-30)), 0.0)
        # the gradient of the window sum: each input gets the sum of its windows' shares
        back = torch.ops.aten.avg_pool2d_backward(share, x, kernel, stride, padding, pool.ceil_mode, True, 1)
        return (back.mul_(dx),)


class BilinearSplit(Rule):
    """A product of two input-dependent tensors: each operand's multiplier is the other's midpoint."""

    kinds = (Product,)
    needs_reference = True

    def backward(self, grad: torch.Tensor, call: Call) -> Grads:
        (a0, b0), _ = _reference(call)
        a, b = call.inputs
        mid_a, mid_b = (a + a0) / 2, (b + b0) / 2
        grad_a = _vjp(lambda t: call.compute(t, mid_b), a, grad)
        grad_b = _vjp(lambda t: call.compute(mid_a, t), b, grad)
        return grad_a, grad_b


DEEPLIFT_RULES: tuple[Rule, ...] = (Rescale(), MaxPoolSplit(), BilinearSplit())


def deeplift_pass(
    graph: RuledGraph,
    method: OnePass,
    x: torch.Tensor,
    reference: tuple[torch.Tensor, torch.Tensor],
    picker: TargetPicker,
    start: int,
) -> tuple[torch.Tensor, torch.Tensor]:
    """DeepLIFT of one chunk against the reference whose values ``graph`` holds.

    Args:
        reference: The reference images (one shared, or one per input) and their logits, as returned
            by :meth:`RuledGraph.reference` (whose site values must be the current ones).

    Returns:
        The ``(B, C, H, W)`` contributions and the ``(B,)`` target differences ``f(x) - f(x')``.
    """
    base, ref_logits = reference
    with torch.enable_grad():
        point = x.detach().clone().requires_grad_(True)
        logits = graph(point)
        targets = picker.take(logits, start)
        scores = method.passes.target_scores(logits, targets)
        (multipliers,) = torch.autograd.grad(scores.sum(), point)
    ref_scores = method.passes.target_scores(ref_logits.expand(len(x), -1), targets)
    return (x - base) * multipliers, (scores.detach() - ref_scores).double()


def reference_pass(graph: RuledGraph, base: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Run ``base`` through ``graph`` (keeping every site's values): ``(base, its logits)``."""
    return base, graph.reference(base)


def model_signature(model: nn.Module) -> tuple[Any, ...]:
    """What a traced copy and its reference values depend on: every module (identity, kind, mode) and
    every parameter's and buffer's storage, shape and version counter, which every in-place update
    bumps (an optimiser step, ``load_state_dict``, ``reset_parameters``, a running-statistics update).
    Not seen: writes through ``tensor.data``, which bypass the version counter."""
    modules = tuple((id(m), type(m), m.training) for m in model.modules())
    tensors = tuple(
        (t.data_ptr(), t._version, t.dtype, t.shape) for t in (*model.parameters(), *model.buffers())
    )
    return modules, tensors


class ReferenceCache:
    """A traced copy of a model with the values of one shared reference, kept between calls.

    The reference does not depend on the input, so a second call with the same model (same
    :func:`model_signature`) and the same reference image skips both the trace and the reference pass:
    DeepLIFT then costs one forward and one backward pass. Holds about one forward pass of one image in
    memory (every rule site's input and output) for the life of the method object.
    """

    def __init__(self) -> None:
        self.signature: tuple[Any, ...] | None = None
        self.graph: RuledGraph | None = None
        self.base: torch.Tensor | None = None
        self.logits: torch.Tensor | None = None

    def graph_of(self, model: nn.Module) -> RuledGraph:
        """The traced copy of ``model``, traced again when the model changed since the last call."""
        signature = model_signature(model)
        if self.graph is None or signature != self.signature:
            self.clear()
            self.graph, self.signature = RuledGraph(model, DEEPLIFT_RULES, fold_batch_norm=True), signature
        return self.graph

    def reference(self, base: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """:func:`reference_pass` of ``base`` through the current graph, or its kept result."""
        assert self.graph is not None, "graph_of runs first"
        kept = self.base
        if (
            kept is None
            or self.logits is None
            or (kept.shape, kept.dtype, kept.device) != (base.shape, base.dtype, base.device)
            or not torch.equal(kept, base)
        ):
            self.base = None  # the site values are overwritten now: valid again only once complete
            _, self.logits = reference_pass(self.graph, base)
            self.base = kept = base
        assert self.logits is not None
        return kept, self.logits

    def forget_reference(self) -> None:
        """The site values are about to be overwritten by another reference."""
        self.base = self.logits = None

    def clear(self) -> None:
        """Drop the graph and the reference values."""
        if self.graph is not None:
            self.graph.clear()
        self.signature = self.graph = self.base = self.logits = None


#: Under ``compiled="auto"``, a method object turns to the compiled kernels once it has run this many
#: image passes (images times baselines): compiling costs about 4 to 11 s once per process on a 2-core
#: AMD EPYC, and the kernels save 0.01 to 0.03 s per 224 px image on ResNet-50 and DenseNet-121.
COMPILE_AFTER = 512
COMPILED_SETTINGS = ("auto", "on", "off")


class KernelPolicy:
    """Whether a DeepLIFT call runs the rules' compiled kernels (:mod:`~cnnlens.attribution.engine.kernels`):
    ``"on"``, ``"off"``, or ``"auto"`` (once the object has run :data:`COMPILE_AFTER` image passes, where
    the compilation pays for itself). Either way only where the ``compiled_kernels`` capability is
    there; ``"on"`` without it says why once (logged) and runs eager."""

    def __init__(self, setting: str):
        if setting not in COMPILED_SETTINGS:
            raise InputError(f"compiled must be one of {', '.join(COMPILED_SETTINGS)}, got {setting!r}")
        self.setting = setting
        self.passes = 0
        self.warned = False

    def wants(self, passes: int, device: torch.device) -> bool:
        """Count ``passes`` more image passes; whether this call uses the kernels."""
        self.passes += passes
        if self.setting == "off" or (self.setting == "auto" and self.passes < COMPILE_AFTER):
            return False
        found = capabilities.probe("compiled_kernels", device)
        if not found.available and self.setting == "on" and not self.warned:
            self.warned = True
            logger.warning("compiled='on', but the kernels cannot run here (%s): eager passes", found.reason)
        return found.available


def _result(total: torch.Tensor, difference: torch.Tensor) -> Attributed:
    maps = total.sum(dim=1)
    gap = (maps.sum(dim=(1, 2)) - difference).abs()
    return Attributed(maps.float(), {"completeness_gap": gap.float().cpu()})


@register
class DeepLift(OnePass):
    """DeepLIFT with the rescale rule, exact on stock CNNs (ResNet, VGG, DenseNet...).

    The attributions sum to ``f(x) - f(x')`` of the target logit; the gap of each input is returned in
    ``extras["completeness_gap"]`` (float32 round-off on networks of convolutions, activations, max
    pools, residual adds, concatenations and products; larger where layer norm or softmax are used).

    Args:
        baseline: The reference: ``"black"``, ``"blur"``, ``"noise"``, ``"zero"`` or a tensor, as for
            :class:`~cnnlens.attribution.methods.gradient.IntegratedGradients`.
        blur_sigma: Standard deviation in pixels of the ``"blur"`` baseline.
        seed: Seed of the ``"noise"`` baseline.
        compiled: ``"auto"``, ``"on"`` or ``"off"``: run the rescale rule of ReLU-like clamps as one
            compiled kernel (:class:`KernelPolicy`; ``"auto"`` once this object has explained
            :data:`COMPILE_AFTER` images). The maps are the same to float32 round-off.

    A shared reference (``"black"``, ``"zero"``, one image) is run once: the object keeps the traced copy
    and the reference values (about one forward pass of one image in memory) for its later calls, until
    the model's modules, parameters or buffers change (see :func:`model_signature`) or the reference
    does; a later call then costs one forward and one backward pass.

    Shape:
        A ``(N, H, W)`` signed map (contributions summed over the channels).

    References:
        Shrikumar, Greenside, Kundaje. Learning Important Features Through Propagating Activation
        Differences. ICML 2017. Ancona, Ceolini, Öztireli, Gross. Towards better understanding of
        gradient-based attribution methods for Deep Neural Networks. ICLR 2018.
    """

    name = "deeplift"
    family = "gradient"
    summary = "contributions of x - baseline through rescale multipliers (sums to f(x) - f(baseline))"
    reference = "Shrikumar et al. 2017"
    needs_gradients = True
    signed = True

    def __init__(
        self,
        model: ModelLike,
        *,
        baseline: str | torch.Tensor = "black",
        blur_sigma: float = 10.0,
        seed: int = 0,
        compiled: str = "auto",
        batch_size: int | None = None,
    ):
        super().__init__(model, batch_size=batch_size)
        check_baseline(baseline)
        if not blur_sigma > 0:
            raise InputError(f"blur_sigma must be a positive number of pixels, got {blur_sigma}")
        self.baseline = baseline
        self.blur_sigma = blur_sigma
        self.seed = seed
        self.compiled = compiled
        self._kernels = KernelPolicy(compiled)
        self._cache = ReferenceCache()

    def _shared(self) -> bool:
        if isinstance(self.baseline, torch.Tensor):
            return self.baseline.ndim == 3 or self.baseline.shape[0] == 1
        return self.baseline in ("black", "zero")

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        state["_cache"] = ReferenceCache()  # a copy traces its own model
        return state

    def _attribute_picking(self, inputs: torch.Tensor, picker: TargetPicker, batch_size: int) -> Attributed:
        cache = self._cache
        graph = cache.graph_of(self.module)
        shared = self._shared()
        source = inputs[:1] if shared else inputs
        baselines = make_baselines(self.model, self.baseline, source, self.blur_sigma, self.seed)
        if not shared:
            cache.forget_reference()
        graph.use_kernels(self._kernels.wants(len(inputs), inputs.device))
        maps, differences = [], []
        for start in range(0, len(inputs), batch_size):
            x = inputs[start : start + batch_size]
            if shared:  # one reference pass for every chunk, and every later call with the same model
                reference = cache.reference(baselines)
            else:
                reference = reference_pass(graph, baselines[start : start + len(x)])
            contributions, difference = deeplift_pass(graph, self, x, reference, picker, start)
            maps.append(contributions.double())
            differences.append(difference)
        if not shared:
            graph.clear()
        return _result(torch.cat(maps), torch.cat(differences))


SHAP_BASELINES = ("noise", "blur_noise")


@register
class DeepLiftShap(OnePass):
    """DeepLIFT-SHAP: the mean of DeepLIFT over a set of baselines (an expectation of SHAP values).

    The attributions sum to ``f(x) - mean_k f(b_k)``; the gap is in ``extras["completeness_gap"]``.

    Args:
        baselines: ``"noise"`` (uniform noise over the pixel range), ``"blur_noise"`` (the image
            blurred by ``blur_sigma`` plus Gaussian noise of 0.1 of the pixel range) or a tensor
            ``(K, C, H, W)`` of baseline images in the model's input space (e.g. training images).
        n_baselines: How many baselines are drawn (ignored for a tensor).
        seed: Seed of the baselines' private generator.
        compiled: ``"auto"``, ``"on"`` or ``"off"``, as for :class:`DeepLift` (``"auto"`` counts
            images times baselines).

    Shape:
        A ``(N, H, W)`` signed map.

    References:
        Lundberg, Lee. A Unified Approach to Interpreting Model Predictions. NeurIPS 2017 (Deep SHAP).
    """

    name = "deeplift_shap"
    family = "gradient"
    needs_gradients = True
    signed = True
    summary = "DeepLIFT averaged over a set of baselines (sums to f(x) - E f(baseline))"
    reference = "Lundberg & Lee 2017"
    quick_params: ClassVar[dict[str, Any]] = {"n_baselines": 4}

    def __init__(
        self,
        model: ModelLike,
        *,
        baselines: str | torch.Tensor = "noise",
        n_baselines: int = 16,
        blur_sigma: float = 10.0,
        seed: int = 0,
        compiled: str = "auto",
        batch_size: int | None = None,
    ):
        super().__init__(model, batch_size=batch_size)
        if not blur_sigma > 0:
            raise InputError(f"blur_sigma must be a positive number of pixels, got {blur_sigma}")
        if isinstance(baselines, torch.Tensor):
            check_baseline(baselines)
            if baselines.ndim != 4:
                raise InputError(
                    f"baselines must be a (K, C, H, W) tensor, got shape {tuple(baselines.shape)}"
                )
        elif baselines not in SHAP_BASELINES:
            raise InputError(
                f"baselines must be one of {', '.join(SHAP_BASELINES)} or a tensor, got {baselines!r}"
            )
        check_positive_int("n_baselines", n_baselines)
        self.baselines = baselines
        self.n_baselines = n_baselines
        self.blur_sigma = blur_sigma
        self.seed = seed
        self.compiled = compiled
        self._kernels = KernelPolicy(compiled)

    def _baseline_set(self, x: torch.Tensor) -> torch.Tensor:
        """The ``(K, C, H, W)`` baselines of one input ``(C, H, W)``."""
        if isinstance(self.baselines, torch.Tensor):
            given = self.baselines.detach().to(device=x.device, dtype=x.dtype)
            if given.shape[1:] != x.shape:
                raise InputError(
                    f"the baselines have shape {tuple(given.shape)}, but an input is {tuple(x.shape)}; "
                    "give (K, C, H, W) with the inputs' C, H, W"
                )
            return given
        lo, hi = pixel_bounds(self.model, x[None])
        generator = seeded(self.seed, x.device)
        shape = (self.n_baselines, *x.shape)
        draws = torch.rand(shape, generator=generator, device=x.device, dtype=x.dtype)
        if self.baselines == "noise":
            return lo + (hi - lo) * draws
        blurred = make_baselines(self.model, "blur", x[None], self.blur_sigma, self.seed)
        noise = torch.randn(shape, generator=generator, device=x.device, dtype=x.dtype)
        return blurred + 0.1 * (hi - lo) * noise

    def _attribute_picking(self, inputs: torch.Tensor, picker: TargetPicker, batch_size: int) -> Attributed:
        graph = RuledGraph(self.module, DEEPLIFT_RULES, fold_batch_norm=True)
        sets = torch.stack([self._baseline_set(x) for x in inputs], dim=1)  # (K, N, C, H, W)
        shared = isinstance(self.baselines, torch.Tensor) or self.baselines == "noise"
        graph.use_kernels(self._kernels.wants(len(inputs) * len(sets), inputs.device))
        total = torch.zeros(inputs.shape, dtype=torch.float64, device=inputs.device)
        difference = torch.zeros(len(inputs), dtype=torch.float64, device=inputs.device)
        for k in range(len(sets)):
            reference = reference_pass(graph, sets[k, :1]) if shared else None
            for start in range(0, len(inputs), batch_size):
                x = inputs[start : start + batch_size]
                if not shared:
                    reference = reference_pass(graph, sets[k, start : start + len(x)])
                assert reference is not None
                contributions, diff = deeplift_pass(graph, self, x, reference, picker, start)
                total[start : start + len(x)] += contributions.double()
                difference[start : start + len(x)] += diff
        graph.clear()
        return _result(total / len(sets), difference / len(sets))
