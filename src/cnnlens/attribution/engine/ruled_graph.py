"""A traced functional copy of a model on which backpropagation rules apply at every call.

:class:`RuledGraph` traces the user's model with ``torch.fx`` and rewrites the graph, never the model:

* every call that a rule applies to (a module such as ``nn.ReLU``, a function such as ``F.relu`` or
  ``operator.mul``, a method such as ``x.relu()``) becomes its own *site*, so a ReLU module that a
  ResNet Bottleneck calls three times is three sites, each with its own reference values;
* in-place operations become out-of-place (``operator.iadd`` -> ``operator.add``, ``x.add_(y)`` ->
  ``x.add(y)``, ``inplace=True`` -> ``False``; an in-place activation module is run as a shallow copy
  with ``inplace=False``), so no value a rule reads is overwritten;
* a product counts as one only when both operands depend on the input (a product with a weight is
  linear).

The leaf modules (convolutions, batch norms, linear layers...) are the user's own objects, called as
they are; only the new graph and its sites are made. :meth:`RuledGraph.reference` runs a reference
input and keeps every site's inputs and output; a call on the inputs then applies the rules with those
references (see :mod:`cnnlens.attribution.engine.rules`).
"""

from __future__ import annotations

import copy
import operator
from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F
from torch import fx, nn
from torch.nn.utils.fusion import fuse_conv_bn_eval

from cnnlens.attribution.engine.fused import fusable_norm, single_user
from cnnlens.attribution.engine.kernels import MIN_ELEMENTS
from cnnlens.attribution.engine.rules import Call, Rule, kerneled, rule_for, ruled, scaled
from cnnlens.attribution.engine.tracing import LeafTracer, timm_notrace_modules
from cnnlens.errors import InputError


class Product:
    """The kind of a product of two tensors that both depend on the input (``a * b``, ``a @ b``)."""


#: Functional forms and the module kind each counts as.
FUNCTION_KINDS: dict[Any, type] = {
    F.relu: nn.ReLU,
    torch.relu: nn.ReLU,
    F.relu6: nn.ReLU6,
    F.hardtanh: nn.Hardtanh,
    F.leaky_relu: nn.LeakyReLU,
    F.elu: nn.ELU,
    F.gelu: nn.GELU,
    F.silu: nn.SiLU,
    F.mish: nn.Mish,
    F.softplus: nn.Softplus,
    F.hardswish: nn.Hardswish,
    F.hardsigmoid: nn.Hardsigmoid,
    torch.sigmoid: nn.Sigmoid,
    F.sigmoid: nn.Sigmoid,
    torch.tanh: nn.Tanh,
    F.tanh: nn.Tanh,
    F.max_pool2d: nn.MaxPool2d,
    operator.mul: Product,
    torch.mul: Product,
    operator.matmul: Product,
    torch.matmul: Product,
    torch.bmm: Product,
}
METHOD_KINDS: dict[str, type] = {
    "relu": nn.ReLU,
    "sigmoid": nn.Sigmoid,
    "tanh": nn.Tanh,
    "mul": Product,
    "matmul": Product,
    "bmm": Product,
}
INPLACE_FUNCTIONS = {
    operator.iadd: operator.add,
    operator.isub: operator.sub,
    operator.imul: operator.mul,
    operator.itruediv: operator.truediv,
}
INPLACE_METHODS = {"add_", "sub_", "mul_", "div_", "relu_", "sigmoid_", "tanh_", "clamp_", "clamp_min_"}


class _Site(nn.Module):
    """One call of the traced graph under a rule, with its values on the reference input."""

    def __init__(self, rule: Rule, op: Callable[..., Any], kind: type, varying: tuple[int, ...]):
        super().__init__()
        self.rule, self.op, self.kind, self.varying = rule, op, kind, varying
        self.recording = False
        self.reference: tuple[tuple[torch.Tensor, ...], torch.Tensor] | None = None
        self.kernel = rule.kernel(kind, op) if len(varying) == 1 else None
        self.kernels_on = False

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        with torch.no_grad():
            out = self.op(*args, **kwargs)
        inputs = tuple(args[i] for i in self.varying)
        if self.recording:
            self.reference = (tuple(x.detach() for x in inputs), out.detach())
            return out
        if not any(x.requires_grad for x in inputs):
            return out
        if (
            self.kernels_on
            and self.kernel is not None
            and self.reference is not None
            and inputs[0].numel() >= MIN_ELEMENTS
        ):
            return kerneled(out, inputs[0], self.kernel, self.reference[0][0])

        def compute(*xs: torch.Tensor) -> Any:
            given = list(args)
            for i, x in zip(self.varying, xs):
                given[i] = x
            return self.op(*given, **kwargs)

        call = Call(self.op, self.kind, inputs, out, self.reference, compute)
        with torch.no_grad():
            m = self.rule.multiplier(call)
        return ruled(self.rule, call) if m is None else scaled(out, inputs[0], m)


def _out_of_place(module: nn.Module) -> nn.Module:
    if not getattr(module, "inplace", False):
        return module
    twin = copy.copy(module)  # a shallow copy: the user's module keeps inplace=True
    setattr(twin, "inplace", False)  # noqa: B010 (mypy: nn.Module's __setattr__ is typed for tensors)
    return twin


def _max_pool_module(node: fx.Node) -> nn.Module | None:
    """``F.max_pool2d(x, ...)`` with constant arguments as the equivalent ``nn.MaxPool2d``."""
    names = ("kernel_size", "stride", "padding", "dilation", "ceil_mode", "return_indices")
    settings: dict[str, Any] = dict(zip(names, node.args[1:]))
    settings |= {k: v for k, v in node.kwargs.items() if k != "input"}
    if any(isinstance(v, fx.Node) for v in settings.values()) or settings.get("return_indices"):
        return None
    return nn.MaxPool2d(**settings)


class RuledGraph:
    """The traced functional copy of ``model`` with ``rules`` applied at every matching call.

    Args:
        model: The user's network (not modified: no hook, no attribute, no flag).
        rules: The rules, first match wins.

    Raises:
        InputError: ``torch.fx`` cannot trace the model (data-dependent control flow...).
    """

    def __init__(self, model: nn.Module, rules: tuple[Rule, ...], fold_batch_norm: bool = False):
        try:
            graph = LeafTracer(timm_notrace_modules(), None).trace(model)
        except (fx.proxy.TraceError, TypeError, NotImplementedError, AttributeError) as error:
            first = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
            raise InputError(
                f"{type(model).__name__} cannot be traced by torch.fx ({first[:200]}), which this "
                "method needs to run the model's functional copy"
            ) from None
        self.module = fx.GraphModule(model, graph)
        self.sites: list[_Site] = []
        self.folded = self._fold_batch_norms() if fold_batch_norm else 0
        self._rewrite(rules)

    def _fold_batch_norms(self) -> int:
        """Fold every eval-mode batch norm whose input is a plain convolution used by nothing else
        into a copy of that convolution (``torch.nn.utils.fusion.fuse_conv_bn_eval``; the user's
        modules are not touched): the same affine map, in one operation instead of two, forward and
        backward. Returns how many were folded."""
        graph, folded = self.module.graph, 0
        for node in list(graph.nodes):
            if node.op != "call_module":
                continue
            conv = self.module.get_submodule(str(node.target))
            user = single_user(node)
            if type(conv) is not nn.Conv2d or conv.training or user is None:
                continue
            bn = self.module.get_submodule(str(user.target))
            if type(bn) is not nn.BatchNorm2d or not fusable_norm(bn)[0]:
                continue  # timm's BatchNormAct2d is an activation site of its own
            fused = fuse_conv_bn_eval(conv, bn).requires_grad_(False)
            name = f"_cnnlens_folded_{folded}"
            self.module.add_submodule(name, fused)
            node.target = name
            user.replace_all_uses_with(node)
            graph.erase_node(user)
            folded += 1
        return folded

    def _varying(self) -> set[fx.Node]:
        varying: set[fx.Node] = set()
        for node in self.module.graph.nodes:
            if node.op == "placeholder" or any(a in varying for a in node.all_input_nodes):
                varying.add(node)
        return varying

    def _kind_and_op(self, node: fx.Node) -> tuple[type | None, Callable[..., Any] | None]:
        if node.op == "call_module":
            module = self.module.get_submodule(str(node.target))
            return type(module), _out_of_place(module)
        if node.op == "call_function" and node.target in FUNCTION_KINDS:
            kind = FUNCTION_KINDS[node.target]
            if kind is nn.MaxPool2d:
                return kind, _max_pool_module(node)
            return kind, node.target  # type: ignore[return-value]
        if node.op == "call_method" and node.target in METHOD_KINDS:
            name = str(node.target)
            return METHOD_KINDS[name], lambda x, *a, **k: getattr(x, name)(*a, **k)
        return None, None

    def _rewrite(self, rules: tuple[Rule, ...]) -> None:
        graph = self.module.graph
        for node in graph.nodes:  # in-place operations made out-of-place
            if node.op == "call_function" and node.target in INPLACE_FUNCTIONS:
                node.target = INPLACE_FUNCTIONS[node.target]
            elif node.op == "call_method" and node.target in INPLACE_METHODS:
                node.target = str(node.target)[:-1]
            if node.kwargs.get("inplace") is True:
                node.kwargs = {**node.kwargs, "inplace": False}
        varying = self._varying()
        for node in list(graph.nodes):
            if node not in varying or node.op not in ("call_module", "call_function", "call_method"):
                continue
            kind, op = self._kind_and_op(node)
            rule = rule_for(rules, kind) if kind is not None else None
            if rule is None or op is None or kind is None:
                continue
            positions = tuple(i for i, a in enumerate(node.args) if isinstance(a, fx.Node) and a in varying)
            if kind is Product and len(positions) < 2:
                continue  # a product with a constant is linear: the ordinary gradient is exact
            if kind is not Product:
                positions = positions[:1]
            site = _Site(rule, op, kind, positions)
            name = f"_cnnlens_site_{len(self.sites)}"
            self.module.add_submodule(name, site)
            self.sites.append(site)
            args, kwargs = node.args, dict(node.kwargs)
            if node.op == "call_function" and kind is nn.MaxPool2d:  # the settings are in the module
                args, kwargs = node.args[:1], {}
            with graph.inserting_after(node):
                new = graph.call_module(name, args, kwargs)
            node.replace_all_uses_with(new)
            graph.erase_node(node)
            varying.add(new)
        graph.lint()
        self.module.recompile()

    def reference(self, inputs: torch.Tensor) -> torch.Tensor:
        """Run the reference input (no autograd) and keep every site's values: its logits."""
        for site in self.sites:
            site.recording = True
        try:
            with torch.no_grad():
                return self.module(inputs)
        finally:
            for site in self.sites:
                site.recording = False

    def __call__(self, inputs: torch.Tensor) -> torch.Tensor:
        """The logits of ``inputs``; their backward pass follows the rules."""
        if self.sites and self.sites[0].reference is None and self.sites[0].rule.needs_reference:
            raise RuntimeError("RuledGraph.reference must run before the rules that need one")
        return self.module(inputs)

    def use_kernels(self, on: bool) -> None:
        """Run the rules' compiled kernels (:meth:`Rule.kernel`) where they have one (``on``), or the
        eager operations; the values are the same to float32 round-off."""
        for site in self.sites:
            site.kernels_on = on

    def clear(self) -> None:
        """Drop the reference values."""
        for site in self.sites:
            site.reference = None
