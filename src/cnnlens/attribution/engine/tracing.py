"""``torch.fx`` tracing shared by the layer split and the fused network: timm's untraceable modules and
functions kept as leaves."""

from __future__ import annotations

from typing import Any

from torch import fx, nn


class LeafTracer(fx.Tracer):
    """Tracer that keeps the split layer (and timm's untraceable modules) as single nodes."""

    def __init__(self, leaves: tuple[type[nn.Module], ...], layer: nn.Module | None) -> None:
        super().__init__(autowrap_functions=timm_notrace_functions())
        self.leaves = leaves
        self.layer = layer

    def is_leaf_module(self, m: nn.Module, module_qualified_name: str) -> bool:
        if m is self.layer or isinstance(m, self.leaves):
            return True
        return super().is_leaf_module(m, module_qualified_name)


def timm_notrace_modules() -> tuple[type[nn.Module], ...]:
    try:
        from timm.models._features_fx import get_notrace_modules
    except ImportError:
        return ()
    return tuple(get_notrace_modules())


def timm_notrace_functions() -> tuple[Any, ...]:
    try:
        from timm.models._features_fx import get_notrace_functions
    except ImportError:
        return ()
    return tuple(get_notrace_functions())
