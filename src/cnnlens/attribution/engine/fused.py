"""The network as the perturbation methods' inference passes run it: convolution, batch norm and
activation in one call.

A perturbation method sends hundreds of perturbed images through the network without gradients, so
the cost per image is all that counts. In eager PyTorch every convolution writes its output, batch
norm reads and writes it again, and the activation a third time; on a memory-bound CPU network such as
EfficientNet-Lite0 those two extra passes are about a third of the forward. :func:`fused_network`
builds, once per model and input size, a ``torch.fx`` copy of the network's graph in which every
``Conv2d`` followed by its ``BatchNorm2d`` (folded into the convolution's weights, in float32, with
``torch.nn.utils.fusion.fuse_conv_bn_weights``) and its activation is one :class:`FusedConv`, which on
the CPU is one oneDNN convolution with the activation as a post-op (``torch.ops.mkldnn.
_convolution_pointwise``, the call PyTorch's own inference compiler emits). This is what inference
compilers call freezing; here it costs one ``torch.fx`` trace instead of a compilation.

What stays as it was: the model (the copy holds new folded weights and shares the unfused modules,
so hooks on those, on the model itself and on the classifier still run); the numbers (in float32 the
fused network is checked against the model when it is built and reproduces its logits to about 1e-5;
in bfloat16 each fused convolution adds its bias in float32 before rounding, which is no less accurate
than autocast's convolution followed by a bf16 batch norm); and where it does not apply, it is not
used: a model ``torch.fx`` cannot trace, gradients on, a model in training mode, hooks on a layer that
would be fused away, a model whose weights changed since the copy was made (the copy is made again),
or a split that does not reproduce the model (logged, eager from then on).
"""

from __future__ import annotations

import logging
import weakref
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, cast

import torch
from torch import fx, nn
from torch.nn import functional as F
from torch.nn.utils.fusion import fuse_conv_bn_weights

from cnnlens import capabilities
from cnnlens.attribution.engine.padding import same_padding_kernel, timm_conv2d_same
from cnnlens.attribution.engine.precision import bf16_is_native, evaluation_context, runs_float32
from cnnlens.attribution.engine.tracing import LeafTracer, timm_notrace_modules
from cnnlens.models.hooks import Handles

logger = logging.getLogger(__name__)


# -- what can be fused ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class PostOp:
    """An activation as a oneDNN post-op: ``attr``, ``scalars`` and ``algorithm`` of
    ``_convolution_pointwise``, and the function that computes it elsewhere."""

    attr: str
    scalars: tuple[float, ...] = ()
    algorithm: str = ""
    fn: Callable[[torch.Tensor], torch.Tensor] | None = None


def post_op(m: nn.Module) -> PostOp | None:
    """The post-op computing ``m`` (an activation module of exactly a known type), else ``None``."""
    kind = type(m)
    simple: dict[type[nn.Module], tuple[str, Callable[[torch.Tensor], torch.Tensor] | None]] = {
        nn.Identity: ("none", None),
        nn.ReLU: ("relu", F.relu),
        nn.SiLU: ("swish", F.silu),
        nn.Sigmoid: ("sigmoid", torch.sigmoid),
        nn.Tanh: ("tanh", torch.tanh),
        nn.Hardswish: ("hardswish", F.hardswish),
        nn.Hardsigmoid: ("hardsigmoid", F.hardsigmoid),
    }
    if kind in simple:
        attr, fn = simple[kind]
        return PostOp(attr, fn=fn)
    if isinstance(m, nn.Hardtanh) and kind in (nn.Hardtanh, nn.ReLU6):
        lo, hi = float(m.min_val), float(m.max_val)
        return PostOp("hardtanh", (lo, hi), fn=lambda t: F.hardtanh(t, lo, hi))
    if isinstance(m, nn.LeakyReLU) and kind is nn.LeakyReLU:
        slope = float(m.negative_slope)
        return PostOp("leaky_relu", (slope,), fn=lambda t: F.leaky_relu(t, slope))
    if isinstance(m, nn.GELU) and kind is nn.GELU:
        approximate = str(m.approximate)
        return PostOp("gelu", (), approximate, fn=lambda t: F.gelu(t, approximate=approximate))
    return None


def _fusable_conv(m: nn.Module) -> bool:
    """A plain ``nn.Conv2d`` with numeric zero padding, or timm's ``Conv2dSame`` (TF "same" padding)."""
    same = timm_conv2d_same()
    if same is not None and type(m) is same:
        return m.padding_mode == "zeros"
    return (
        type(m) is nn.Conv2d
        and m.padding_mode == "zeros"
        and not isinstance(m.padding, str)
        and all(isinstance(p, int) for p in m.padding)
    )


def _batch_norm_act() -> type[nn.Module] | None:
    try:
        from timm.layers.norm_act import BatchNormAct2d
    except ImportError:
        return None
    return BatchNormAct2d


def fusable_norm(m: nn.Module) -> tuple[bool, PostOp | None]:
    """Whether ``m`` is an eval-mode batch norm with running statistics, and its own activation
    (timm's ``BatchNormAct2d``: norm, dropout, activation in one module)."""
    norm_act = _batch_norm_act()
    plain = type(m) is nn.BatchNorm2d
    timm_norm = norm_act is not None and type(m) is norm_act
    if not (plain or timm_norm) or m.training or getattr(m, "running_mean", None) is None:
        return False, None
    if plain:
        return True, None
    drop, act = getattr(m, "drop", None), getattr(m, "act", None)
    if type(drop) not in (nn.Identity, nn.Dropout, nn.Dropout2d) or act is None:
        return False, None
    op = post_op(act)
    return (op is not None), op


def _has_hooks(m: nn.Module) -> bool:
    return bool(m._forward_hooks or m._forward_pre_hooks or m._backward_hooks or m._backward_pre_hooks)


def _global_hooks() -> bool:
    from torch.nn.modules import module as module_mod

    return bool(module_mod._global_forward_hooks or module_mod._global_forward_pre_hooks)


# -- the fused convolution ---------------------------------------------------------------------------


def _mkldnn_pointwise(dtype: torch.dtype = torch.float32) -> Any:
    """oneDNN's fused convolution op where its capability probe passed for ``dtype``, else ``None``."""
    name = "fused_conv_bf16" if dtype == torch.bfloat16 else "fused_conv"
    if not capabilities.available(name, "cpu"):
        return None
    return getattr(getattr(torch.ops, "mkldnn", None), "_convolution_pointwise", None)


class FusedConv(nn.Module):
    """A convolution with its batch norm folded in and its activation as a post-op.

    ``dtype`` is the precision it computes in (the input is cast to it; the bias stays float32, so in
    bf16 it is added before the output is rounded). ``same`` marks TensorFlow "same" padding, worked
    out from the input size on every call as :func:`~cnnlens.attribution.engine.padding.padding_free_forward`
    does. On the CPU it is one oneDNN call; elsewhere ``F.conv2d`` and the activation.
    """

    weight: torch.Tensor
    bias: torch.Tensor

    def __init__(
        self, conv: nn.Conv2d, norm: nn.BatchNorm2d | None, op: PostOp, dtype: torch.dtype, same: bool
    ) -> None:
        super().__init__()
        weight = conv.weight.detach().float()
        bias = conv.bias.detach().float() if conv.bias is not None else None
        if norm is not None:
            mean, var = cast(torch.Tensor, norm.running_mean), cast(torch.Tensor, norm.running_var)
            gamma = norm.weight.detach().float() if norm.weight is not None else None
            beta = norm.bias.detach().float() if norm.bias is not None else None
            w, b = fuse_conv_bn_weights(weight, bias, mean.float(), var.float(), float(norm.eps), gamma, beta)
            weight, bias = w.detach(), b.detach()
        self.register_buffer("weight", weight.to(dtype))
        self.register_buffer("bias", bias if bias is not None else torch.zeros(weight.shape[0]))
        self.stride, self.dilation, self.groups = tuple(conv.stride), tuple(conv.dilation), conv.groups
        self.padding = tuple(int(p) for p in conv.padding)
        self.same, self.op, self.dtype = same, op, dtype
        self._pointwise = _mkldnn_pointwise(dtype)

    def _padded(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, tuple[int, int]]:
        weight: torch.Tensor = self.weight
        if not self.same:
            return x, weight, (self.padding[0], self.padding[1])
        found = same_padding_kernel(weight, tuple(x.shape), self.stride, self.dilation, self.groups)
        if found is not None:
            return x, found[0], found[1]
        from timm.layers.padding import pad_same  # self.same: the layer was timm's Conv2dSame

        return pad_same(x, list(weight.shape[-2:]), list(self.stride), list(self.dilation)), weight, (0, 0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dtype != self.dtype:
            x = x.to(self.dtype)
        x, weight, padding = self._padded(x)
        if self._pointwise is not None and x.device.type == "cpu":
            out: torch.Tensor = self._pointwise(
                x,
                weight,
                self.bias,
                list(padding),
                list(self.stride),
                list(self.dilation),
                self.groups,
                self.op.attr,
                list(self.op.scalars),
                self.op.algorithm,
            )
            return out
        with torch.autocast(device_type=x.device.type, enabled=False):
            out = F.conv2d(x, weight, self.bias.to(x.dtype), self.stride, padding, self.dilation, self.groups)
            return out if self.op.fn is None else self.op.fn(out)


# -- building the fused graph --------------------------------------------------------------------------


def _conv_input_shapes(module: nn.Module, sample: torch.Tensor) -> tuple[torch.Tensor, dict[str, torch.Size]]:
    """The model's float32 logits for ``sample`` and the input shape of every convolution."""
    shapes: dict[str, torch.Size] = {}
    handles = Handles()

    def record(name: str) -> Callable[[nn.Module, tuple[Any, ...]], None]:
        def hook(_m: nn.Module, args: tuple[Any, ...]) -> None:
            shapes.setdefault(name, args[0].shape)

        return hook

    for name, m in module.named_modules():
        if isinstance(m, nn.Conv2d):
            handles.add(m.register_forward_pre_hook(record(name)))
    try:
        with torch.inference_mode():
            logits = module(sample).float()
    finally:
        handles.remove()
    return logits, shapes


def single_user(node: fx.Node) -> fx.Node | None:
    """The one module call that ``node`` feeds, as its only argument; ``None`` where it feeds
    anything else too."""
    users = list(node.users)
    if len(users) != 1:
        return None
    user = users[0]
    if user.op != "call_module" or user.args != (node,) or user.kwargs:
        return None
    return user


@dataclass
class _Chain:
    conv: fx.Node
    norm: fx.Node | None
    act: fx.Node | None
    op: PostOp


def _chains(graph: fx.Graph, modules: dict[str, nn.Module]) -> list[_Chain]:
    """Every convolution node with the batch norm and activation that only it feeds."""
    chains = []
    for node in graph.nodes:
        if node.op != "call_module" or not _fusable_conv(modules[str(node.target)]):
            continue
        if _has_hooks(modules[str(node.target)]):
            continue
        norm = act = None
        op = PostOp("none")
        user = single_user(node)
        if user is not None and not _has_hooks(modules[str(user.target)]):
            ok, own = fusable_norm(modules[str(user.target)])
            if ok:
                norm, op = user, own or PostOp("none")
                if own is None:
                    nxt = single_user(user)
                    if nxt is not None and not _has_hooks(modules[str(nxt.target)]):
                        found = post_op(modules[str(nxt.target)])
                        if found is not None:
                            act, op = nxt, found
            elif (found := post_op(modules[str(user.target)])) is not None:
                act, op = user, found
        chains.append(_Chain(node, norm, act, op))
    return chains


class FloatHead(nn.Module):
    """Calls ``linear`` (the model's own module, so its hooks run) with autocast off on a 2-d input,
    as :func:`~cnnlens.attribution.engine.precision.fp32_ends` does; a token-wise (3-d) call is left to
    autocast."""

    def __init__(self, linear: nn.Linear) -> None:
        super().__init__()
        self.linear = linear

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not runs_float32(self.linear, tuple(x.shape), None):
            out: torch.Tensor = self.linear(x)
            return out
        with torch.autocast(device_type=x.device.type, enabled=False):
            out = self.linear(x.float())
        return out


class FusedNetwork:
    """The fused graph of one model for one input size and precision (see the module's docstring).

    Attributes:
        graph_module: The ``torch.fx`` module to call.
        fused: How many convolutions it fuses.
        replaced: The model's modules that it does not call (the fused convolutions, norms and
            activations): a hook on one of them means the fused network must not be used.
    """

    def __init__(self, graph_module: fx.GraphModule, fused: int, replaced: list[nn.Module]) -> None:
        self.graph_module, self.fused, self.replaced = graph_module, fused, replaced

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        out: torch.Tensor = self.graph_module(x)
        return out


def _tracer() -> LeafTracer:
    """The tracer of the fused graph: timm's untraceable modules and its ``Conv2dSame`` kept whole."""
    same = timm_conv2d_same()
    return LeafTracer(timm_notrace_modules() + ((same,) if same is not None else ()), None)


def build_fused(module: nn.Module, sample: torch.Tensor, precision: str) -> dict[str, FusedNetwork | None]:
    """Trace ``module``, fuse its convolution chains, and check it against the model on ``sample``.

    Returns the networks built, by precision: the float32 one (always built, it is the one checked)
    and ``precision``'s; ``None`` for both (and logs why) where the model cannot be traced, nothing
    can be fused, or the fused network does not reproduce the model's logits in float32.
    """
    none: dict[str, FusedNetwork | None] = dict.fromkeys(("fp32", precision))
    try:
        graph = _tracer().trace(module)
    except Exception as error:  # any tracing failure means: run the model eagerly
        logger.info("fused inference off: torch.fx cannot trace %s (%s)", type(module).__name__, error)
        return none
    modules = dict(module.named_modules())
    chains = _chains(graph, modules)
    if not chains:
        return none
    reference, shapes = _conv_input_shapes(module, sample[:1])
    built: dict[str, FusedNetwork | None] = {}
    for want in ("fp32", precision) if precision != "fp32" else ("fp32",):
        built[want] = _assemble(module, graph, modules, chains, shapes, sample, want)
    check = cast(FusedNetwork, built["fp32"])
    with torch.inference_mode():
        got = check(sample[:1]).float()
    scale = 1.0 + float(reference.abs().max())
    if got.shape != reference.shape or float((got - reference).abs().max()) > 1e-4 * scale:
        logger.info("fused inference off: the fused %s does not reproduce its logits", type(module).__name__)
        return none
    return built


def _assemble(
    module: nn.Module,
    traced: fx.Graph,
    modules: dict[str, nn.Module],
    chains: list[_Chain],
    shapes: dict[str, torch.Size],
    sample: torch.Tensor,
    precision: str,
) -> FusedNetwork:
    graph = fx.Graph()
    env: dict[fx.Node, fx.Node] = {}
    graph.output(graph.graph_copy(traced, env))
    root: dict[str, Any] = {}
    replaced: list[nn.Module] = []
    same = timm_conv2d_same()
    for i, chain in enumerate(chains):
        node = env[chain.conv]
        conv = cast(nn.Conv2d, modules[str(chain.conv.target)])  # _fusable_conv
        norm = cast(nn.BatchNorm2d, modules[str(chain.norm.target)]) if chain.norm is not None else None
        shape = shapes.get(str(chain.conv.target))
        keep = precision == "fp32" or runs_float32(conv, tuple(shape) if shape else None, tuple(sample.shape))
        fused = FusedConv(conv, norm, chain.op, torch.float32 if keep else torch.bfloat16, type(conv) is same)
        name = f"fused_{i}"
        root[name] = fused.to(sample.device)
        node.target = name
        replaced.append(conv)
        for extra in (chain.act, chain.norm):  # the last of the chain first
            if extra is not None:
                replaced.append(modules[str(extra.target)])
                env[extra].replace_all_uses_with(node)
                graph.erase_node(env[extra])
    for i, node in enumerate(graph.nodes):
        if node.op == "call_module" and node.target not in root:
            sub = module.get_submodule(str(node.target))
            if type(sub) is nn.Linear:  # the head in float32 (fp32_ends' rule), still its own module
                root[f"head_{i}"] = FloatHead(sub)
                node.target = f"head_{i}"
            else:
                root[str(node.target)] = sub
        elif node.op == "get_attr":
            root[str(node.target)] = _attr(module, str(node.target))
    gm = fx.GraphModule(root, graph, class_name=f"Fused{type(module).__name__}")
    return FusedNetwork(gm, len(chains), replaced)


def _attr(module: nn.Module, target: str) -> Any:
    owner, _, name = target.rpartition(".")
    return getattr(module.get_submodule(owner) if owner else module, name)


# -- the cache and the pass ----------------------------------------------------------------------------

_CACHE: weakref.WeakKeyDictionary[
    nn.Module, dict[tuple[Any, ...], tuple[tuple[Any, ...] | None, FusedNetwork | None]]
]
_CACHE = weakref.WeakKeyDictionary()


def _fingerprint(module: nn.Module) -> tuple[Any, ...] | None:
    """Identity of every submodule, and identity and version of every parameter and buffer: any
    in-place update, swapped tensor or replaced submodule (a new pooling layer, say) changes it.

    ``None`` when one of them is an inference tensor (made under ``torch.inference_mode``), which
    keeps no version counter: such a model's fused network is built again for every call.
    """
    tensors = [*module.parameters(), *module.buffers()]
    if any(t.is_inference() for t in tensors):
        return None
    weights = tuple((t.data_ptr(), t._version, t.dtype, tuple(t.shape)) for t in tensors)
    return (tuple((name, id(m)) for name, m in module.named_modules()), weights)


def _traced_through(module: nn.Module) -> list[nn.Module]:
    """The submodules a trace inlines (containers and custom blocks; not the leaves the fused graph
    still calls): a hook on one of them would be traced into the graph, or skipped by it."""
    tracer = _tracer()
    out: list[nn.Module] = []
    stack = [(name, child) for name, child in module.named_children()]
    while stack:
        name, m = stack.pop()
        if not tracer.is_leaf_module(m, name):
            out.append(m)
            stack.extend((f"{name}.{n}", c) for n, c in m.named_children())
    return out


def fused_network(module: nn.Module, batch: torch.Tensor, precision: str) -> FusedNetwork | None:
    """The cached fused network for ``module`` at ``batch``'s image size, or ``None`` where it must
    not be used (gradients on, training mode, hooks on a fused-away layer, on a container the trace
    inlines, or global module hooks, a CPU whose oneDNN fused convolution failed its probe, bf16 on a
    device without native bf16 kernels, an untraceable model). It is built again whenever a
    parameter, buffer or submodule of the model has changed since."""
    if torch.is_grad_enabled() or module.training or batch.ndim != 4 or _global_hooks():
        return None
    if batch.device.type == "cpu" and _mkldnn_pointwise() is None:
        return None
    if precision == "bf16" and not bf16_is_native(batch.device):
        return None  # emulated bf16: autocast on the eager model (the fused ops need native kernels)
    if any(_has_hooks(m) for m in _traced_through(module)):
        return None  # a container's hook: the model itself runs, so that it is called as it is now
    key = (precision, batch.device, batch.dtype, tuple(batch.shape[1:]))
    entries = _CACHE.setdefault(module, {})
    fingerprint = _fingerprint(module)
    cached = entries.get(key)
    if cached is None or fingerprint is None or cached[0] != fingerprint:
        for built, net in build_fused(module, batch, precision).items():  # the fp32 one comes with it
            same_size = (built, *key[1:])
            entries[same_size] = (fingerprint, net)
        cached = entries[key]
    net = cached[1]
    if net is None or any(_has_hooks(m) for m in net.replaced):
        return None
    return net


@contextmanager
def _forward_replaced(module: nn.Module, net: FusedNetwork | None) -> Iterator[None]:
    """For the block, calling ``module`` runs ``net`` (the model's own hooks still fire)."""
    if net is None or "forward" in vars(module):
        yield
        return
    module.forward = net
    try:
        yield
    finally:
        vars(module).pop("forward", None)


def inference_pass(
    module: nn.Module,
    batch: torch.Tensor,
    precision: str,
    net: FusedNetwork | None,
    *,
    padding_free: bool = True,
) -> torch.Tensor:
    """``module(batch)`` as the methods' inference passes run it: through ``net`` (from
    :func:`fused_network`) where there is one, whose layers carry their own precision (under bf16
    autocast only covers the layers it does not fuse), else under
    :func:`~cnnlens.attribution.engine.precision.evaluation_context`. Call under ``torch.inference_mode``."""
    if net is None:
        with evaluation_context(precision, batch.device, module, padding_free=padding_free):
            out: torch.Tensor = module(batch)
        return out
    autocast = torch.autocast(
        device_type=batch.device.type, dtype=torch.bfloat16, enabled=precision == "bf16"
    )
    with autocast, _forward_replaced(module, net):
        out = module(batch)
    return out
