"""Which part of a network trains: freeze policies and the train/eval mode they imply.

``features``: everything but the head is frozen (linear probing / seed 002's "only the last layer").
``none``: everything trains (fine-tuning). ``until:LAYER``: every layer up to and including LAYER,
in definition order, is frozen; the layers after it and the head train.

Frozen layers also stay in eval mode while the rest trains, so batch-norm running statistics of a
frozen backbone are never updated and its dropout is off: the frozen part computes exactly what it
computed before training.
"""

from __future__ import annotations

from collections.abc import Sequence

from torch import nn

from cnnlens.models.layers import resolve_layer

FREEZE_POLICIES = ("features", "none", "until:LAYER")


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


def frozen_units(module: nn.Module, policy: str, head: str | Sequence[str]) -> list[str]:
    """Names of the units a policy freezes (see the module doc).

    Args:
        module: The network, with its head already in place.
        policy: ``"features"``, ``"none"`` or ``"until:LAYER"``.
        head: Dotted name(s) of the head module(s) (never frozen).

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
    if not policy.startswith("until:") or not policy[6:]:
        raise ValueError(f"unknown freeze policy {policy!r}; expected one of {', '.join(FREEZE_POLICIES)}")
    layer, _ = resolve_layer(module, policy[6:])
    inside = [i for i, u in enumerate(units) if _under(u, layer) or _under(layer, u)]
    if not inside:
        raise ValueError(f"layer {layer!r} has no parameters or sub-layers to freeze")
    frozen = units[: inside[-1] + 1]
    if any(_under(u, h) for u in frozen for h in heads):
        raise ValueError(
            f"freeze until {layer!r} would freeze the head {', '.join(heads)}; pick an earlier layer"
        )
    return frozen


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
