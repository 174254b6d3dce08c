"""Which part of a network trains: freeze policies and the train/eval mode they imply.

``features``: everything but the head is frozen (linear probing; Fang's ResNet-152 study fine-tunes
"only the last layer"). ``none``: everything trains (fine-tuning). ``until:LAYER``: every layer up
to and including LAYER, in definition order, is frozen; the layers after it and the head train.
``last-stage``: the backbone's last stage and the head train, everything before is frozen; the last
stage is found from the layer list and one dummy forward pass (see :func:`last_stage`), e.g.
``layer4`` of a ResNet, ``blocks.5`` onwards of an EfficientNet, the last conv block of a VGG.

Frozen layers also stay in eval mode while the rest trains, so batch-norm running statistics of a
frozen backbone are never updated and its dropout is off: the frozen part computes exactly what it
computed before training.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from cnnlens.errors import InputError
from cnnlens.models.layers import resolve_layer

FREEZE_POLICIES = ("features", "none", "last-stage", "until:LAYER")


def _units(module: nn.Module) -> list[str]:
    """Modules that own parameters or buffers directly, or have no children, in definition order."""
    out = []
    for name, m in module.named_modules():
        owns = any(True for _ in m.parameters(recurse=False)) or any(True for _ in m.buffers(recurse=False))
        if name and (owns or not any(True for _ in m.children())):
            out.append(name)
    return out


def _under(name: str, prefix: str) -> bool:
    return name == prefix or name.startswith(prefix + ".")


def frozen_units(
    module: nn.Module, policy: str, head: str | Sequence[str], *, input_size: int = 224
) -> list[str]:
    """Names of the units a policy freezes (see the module doc).

    Args:
        module: The network, with its head already in place.
        policy: ``"features"``, ``"none"``, ``"last-stage"`` or ``"until:LAYER"``.
        head: Dotted name(s) of the head module(s) (never frozen).
        input_size: Side of the square input (``last-stage`` runs one dummy forward pass).

    Raises:
        ValueError: Unknown policy, or LAYER is the head or comes after it.
        UnknownNameError: LAYER is not a layer of the network.
    """
    heads = [head] if isinstance(head, str) else list(head)
    units = _units(module)
    if policy == "none":
        return []
    if policy == "features":
        return [u for u in units if not any(_under(u, h) for h in heads)]
    if policy == "last-stage":
        layer = last_stage(module, heads, input_size)
        return [] if layer is None else frozen_units(module, f"until:{layer}", heads)
    if not policy.startswith("until:") or not policy[6:]:
        raise InputError(f"unknown freeze policy {policy!r}; expected one of {', '.join(FREEZE_POLICIES)}")
    layer, _ = resolve_layer(module, policy[6:])
    inside = [i for i, u in enumerate(units) if _under(u, layer) or _under(layer, u)]
    if not inside:
        raise InputError(f"layer {layer!r} has no parameters or sub-layers to freeze")
    frozen = units[: inside[-1] + 1]
    if any(_under(u, h) for u in frozen for h in heads):
        raise InputError(
            f"freeze until {layer!r} would freeze the head {', '.join(heads)}; pick an earlier layer"
        )
    return frozen


def _output_sides(module: nn.Module, input_size: int) -> dict[str, tuple[int, int]]:
    """Spatial size of each module's first 4-d output on a dummy ``input_size`` image, for the
    modules that run before the first adaptive (global) pooling: the feature part of the network."""
    sides: dict[str, tuple[int, int]] = {}
    names = {m: n for n, m in module.named_modules()}
    pooled = False
    with_params = {n for n, m in module.named_modules() if n and any(True for _ in m.parameters())}
    global_pools = {  # adaptive pooling outside every block (not a squeeze-excitation's)
        n
        for n, m in module.named_modules()
        if "adaptive" in type(m).__name__.lower() and not any(_under(n, p) for p in with_params)
    }

    def record(mod: nn.Module, _inputs: object, out: object) -> None:
        nonlocal pooled
        name = names[mod]
        if pooled:
            return
        if name in global_pools:
            pooled = True
        elif isinstance(out, torch.Tensor) and out.ndim == 4 and name not in sides:
            sides[name] = (int(out.shape[-2]), int(out.shape[-1]))

    first = next(module.parameters(), None)
    device = first.device if first is not None else torch.device("cpu")
    handles = [m.register_forward_hook(record) for m in module.modules()]
    modes = [(m, m.training) for m in module.modules()]  # each module's own flag comes back
    try:
        module.eval()
        with torch.no_grad():
            module(torch.zeros(1, 3, input_size, input_size, device=device))
    finally:
        for m, training in modes:
            m.training = training
        for h in handles:
            h.remove()
    return sides


def last_stage(module: nn.Module, head: str | Sequence[str], input_size: int = 224) -> str | None:
    """The layer a ``last-stage`` policy freezes until: the one just before the backbone's last stage.

    The last stage is the run of backbone layers at the end that produce the backbone's final
    feature-map resolution: starting at the top level, the children with parameters (not the head)
    whose output has the resolution of the last of them; the first of that run is the stage, unless
    it is the only child or its own children differ in resolution, in which case the search goes
    inside it. ResNets give ``layer4`` (frozen until ``layer3``), timm EfficientNets the stages from
    the last stride-2 stage on, VGG the convolutions of its last block.

    Args:
        module: The network, with its head in place.
        head: Dotted name(s) of the head module(s).
        input_size: Side of the square input used for the dummy forward pass.

    Returns:
        A dotted name for ``until:``, or ``None`` when the last stage is the whole backbone.
    """
    heads = [head] if isinstance(head, str) else list(head)
    sides = _output_sides(module, input_size)
    units = _units(module)
    params = {n for n, m in module.named_modules() if any(True for _ in m.parameters(recurse=False))}

    def side(name: str) -> tuple[int, int] | None:
        if name in sides:
            return sides[name]
        inner = [u for u in units if _under(u, name) and u in params and u in sides]
        return sides[inner[-1]] if inner else None  # a wrapper whose forward is not called

    def candidates(name: str) -> list[str]:
        sub = module.get_submodule(name) if name else module
        out = []
        for child, m in sub.named_children():
            full = f"{name}.{child}" if name else child
            is_head = any(_under(full, h) for h in heads)
            if not is_head and any(True for _ in m.parameters()) and side(full) is not None:
                out.append(full)
        return out

    def find(name: str) -> str:
        cands = candidates(name)
        if not cands:
            return name
        final = side(cands[-1])
        i = len(cands) - 1
        while i > 0 and side(cands[i - 1]) == final:
            i -= 1
        start = cands[i]
        inner = {side(c) for c in candidates(start)}
        if len(cands) == 1 or len(inner) > 1:
            return find(start)
        return start

    start = find("")
    if not start:
        return None  # no backbone layer with parameters and a spatial output
    first = next(i for i, u in enumerate(units) if _under(u, start))
    if first == 0:
        return None
    before = units[first - 1]
    while "." in before:  # name the largest module that ends right there, e.g. layer3, not layer3.1.bn2
        parent = before.rpartition(".")[0]
        inside = [u for u in units if _under(u, parent)]
        if inside[-1] != units[first - 1]:
            break
        before = parent
    return before


def apply_freeze(module: nn.Module, frozen: list[str]) -> int:
    """Turn off gradients of the frozen units' own parameters; return how many parameters still train."""
    names = set(frozen)
    for name, m in module.named_modules():
        for p in m.parameters(recurse=False):
            p.requires_grad_(name not in names)
    return sum(p.numel() for p in module.parameters() if p.requires_grad)


def set_train_mode(module: nn.Module, frozen: list[str]) -> None:
    """``module.train()``, then eval mode for the frozen units and every module made only of them."""
    module.train()
    names = set(frozen)
    units = _units(module)
    for name, m in module.named_modules():
        inside = [u for u in units if _under(u, name)] if name else []
        if inside and all(u in names for u in inside):
            m.train(False)
