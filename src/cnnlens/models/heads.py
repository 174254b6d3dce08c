"""Classification heads that replace a backbone's own (transfer learning, checkpoints).

``linear``: the last linear layer is replaced by one with ``num_classes`` outputs (seed 002).
``mlp64``: Flatten -> Dense 64 -> ReLU -> Dropout -> Dense K (seed 000); on VGG-style models (a
``classifier`` made of linear layers) it replaces the whole classifier, so it reads the flattened
7x7x512 feature map as in the seed.
"""

from __future__ import annotations

from torch import nn

HEADS = ("original", "linear", "mlp64")


def _parent_and_attr(model: nn.Module, name: str) -> tuple[nn.Module, str]:
    parent_name, _, attr = name.rpartition(".")
    return (model.get_submodule(parent_name) if parent_name else model), attr


def _head_slot(model: nn.Module) -> tuple[str, int]:
    """Name of the module the head replaces and the number of features it receives."""
    classifier = getattr(model, "classifier", None)
    if isinstance(classifier, nn.Sequential):
        linears = [m for m in classifier if isinstance(m, nn.Linear)]
        if len(linears) > 1:  # VGG / AlexNet: the whole classifier is the head
            return "classifier", linears[0].in_features
    return _last_linear(model)


def _last_linear(model: nn.Module) -> tuple[str, int]:
    last = None
    for name, module in model.named_modules():
        if isinstance(module, nn.Linear):
            last = (name, module.in_features)
    if last is None:
        raise ValueError(f"{type(model).__name__} has no linear layer to replace with a new head")
    return last


def mlp64(in_features: int, num_classes: int, hidden: int = 64, dropout: float = 0.5) -> nn.Sequential:
    """Seed 000's head: Flatten -> Linear(hidden) -> ReLU -> Dropout -> Linear(num_classes)."""
    return nn.Sequential(
        nn.Flatten(),
        nn.Linear(in_features, hidden),
        nn.ReLU(),
        nn.Dropout(dropout),
        nn.Linear(hidden, num_classes),
    )


def apply_head(model: nn.Module, head: str, num_classes: int) -> str:
    """Replace ``model``'s classification head in place; return the dotted name of the new head.

    Raises:
        ValueError: Unknown head kind or a bad class count.
    """
    if head not in HEADS:
        raise ValueError(f"unknown head {head!r}; expected one of {', '.join(HEADS)}")
    if num_classes < 1:
        raise ValueError(f"num_classes must be at least 1, got {num_classes}")
    if head == "original":
        return _head_slot(model)[0]
    if head == "linear":
        name, in_features = _last_linear(model)
        new: nn.Module = nn.Linear(in_features, num_classes)
    else:
        name, in_features = _head_slot(model)
        new = mlp64(in_features, num_classes)
    parent, attr = _parent_and_attr(model, name)
    setattr(parent, attr, new)
    return name


def head_parameters(model: nn.Module, head_name: str) -> list[nn.Parameter]:
    """The parameters of the head module called ``head_name``."""
    return list(model.get_submodule(head_name).parameters())
