"""Classification heads that replace a backbone's own (transfer learning, checkpoints).

``linear``: the last linear layer is replaced by one with ``num_classes`` outputs (as Fang's
fruit-classification study fine-tunes the last layer of a ResNet-152).
``mlp64``: Flatten -> Dense 64 -> ReLU -> Dropout -> Dense K, the head of the usual VGG
transfer-learning recipe (ImageNet-trained convolutional layers kept, this head trained on the new
classes); on VGG-style models (a ``classifier`` made of linear layers) it replaces the whole
classifier, so it reads the flattened 7x7x512 feature map as that recipe does.
``cnet`` and ``spn``: Fan et al.'s saliency-aware network (:mod:`cnnlens.models.saliency_net`): the
backbone's feature part (F-Net) wrapped with C-Net (GAP -> 1024 -> K), and for ``spn`` also the
saliency prediction net. These wrap the backbone instead of replacing a layer in it
(:func:`attach_head`).

References:
    Fang. Convolutional Neural Network Interpretability Analysis for Image Classification (no year
    given): a ResNet-152 with only its last layer fine-tuned on 30 fruit classes.
    Fan, Li, Song, Yang. Explainable deep learning-based classification on small-sized dataset
    (project report; no year given).
"""

from __future__ import annotations

from dataclasses import dataclass

from torch import nn

from cnnlens.errors import InputError

HEADS = ("original", "linear", "mlp64", "cnet", "spn")
#: Heads that wrap the backbone in a :class:`~cnnlens.models.saliency_net.SaliencyAwareNet`.
WRAPPING_HEADS = ("cnet", "spn")


def _parent_and_attr(model: nn.Module, name: str) -> tuple[nn.Module, str]:
    parent_name, _, attr = name.rpartition(".")
    return (model.get_submodule(parent_name) if parent_name else model), attr


def _head_slot(model: nn.Module) -> tuple[str, int]:
    """Name of the module the head replaces and the number of features it receives."""
    mlp = _mlp64_name(model)
    if mlp is not None:  # an mlp64 head already in place (anywhere, e.g. a ResNet's fc)
        first = next(m for m in model.get_submodule(mlp).children() if isinstance(m, nn.Linear))
        return mlp, first.in_features
    classifier = getattr(model, "classifier", None)
    if isinstance(classifier, nn.Sequential):
        linears = [m for m in classifier if isinstance(m, nn.Linear)]
        if len(linears) > 1:  # VGG / AlexNet: the whole classifier is the head
            return "classifier", linears[0].in_features
    return _last_linear(model)


def _mlp64_name(model: nn.Module) -> str | None:
    """Dotted name of an mlp64 head (Flatten, Linear, ReLU, Dropout, Linear) holding the last linear."""
    try:
        name, _ = _last_linear(model)
    except ValueError:
        return None
    parent = name.rpartition(".")[0]
    if not parent:
        return None
    module = model.get_submodule(parent)
    kinds = [type(m) for m in module.children()]
    return parent if kinds == [nn.Flatten, nn.Linear, nn.ReLU, nn.Dropout, nn.Linear] else None


def head_names(model: nn.Module, head: str) -> list[str]:
    """Dotted names of the head modules of a model that already has a ``head`` head.

    Raises:
        ValueError: Unknown head kind, or the model has no such head.
    """
    if head not in HEADS:
        raise InputError(f"unknown head {head!r}; expected one of {', '.join(HEADS)}")
    if head in WRAPPING_HEADS:
        spn = getattr(model, "spn", None) is not None
        if not hasattr(model, "classifier") or (head == "spn") != spn:
            raise InputError(f"{type(model).__name__} has no {head} head")
        return ["classifier", "spn"] if head == "spn" else ["classifier"]
    if head == "mlp64":
        name = _mlp64_name(model)
        if name is None:
            raise InputError(f"{type(model).__name__} has no mlp64 head")
        return [name]
    if head == "linear":
        return [_last_linear(model)[0]]
    return [_head_slot(model)[0]]


def _last_linear(model: nn.Module) -> tuple[str, int]:
    last = None
    for name, module in model.named_modules():
        if isinstance(module, nn.Linear):
            last = (name, module.in_features)
    if last is None:
        raise InputError(f"{type(model).__name__} has no linear layer to replace with a new head")
    return last


def mlp64(in_features: int, num_classes: int, hidden: int = 64, dropout: float = 0.5) -> nn.Sequential:
    """The head of the usual VGG transfer-learning recipe.

    Flatten -> Linear(hidden) -> ReLU -> Dropout -> Linear(num_classes).
    """
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
        raise InputError(f"unknown head {head!r}; expected one of {', '.join(HEADS)}")
    if num_classes < 1:
        raise InputError(f"num_classes must be at least 1, got {num_classes}")
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


@dataclass
class Attached:
    """A network with its new head: the module, the head's dotted names, the mapped CAM layer."""

    module: nn.Module
    heads: list[str]
    default_layer: str | None


def attach_head(
    model: nn.Module,
    head: str,
    num_classes: int,
    *,
    input_size: int = 224,
    default_layer: str | None = None,
) -> Attached:
    """Give ``model`` a new head of kind ``head`` (in place, or by wrapping it for ``cnet``/``spn``).

    Args:
        model: The backbone classifier.
        head: One of :data:`HEADS`.
        num_classes: K.
        input_size: Side of the square input (the SPN's output size).
        default_layer: The backbone's default CAM layer, mapped to its name in the returned module.

    Returns:
        The network, the names of its head modules (never frozen) and the mapped default layer.
    """
    if head not in WRAPPING_HEADS:
        return Attached(model, [apply_head(model, head, num_classes)], default_layer)
    from cnnlens.models.saliency_net import build_saliency_net

    if num_classes < 1:
        raise InputError(f"num_classes must be at least 1, got {num_classes}")
    layer = None if default_layer is None else model.get_submodule(default_layer)
    net = build_saliency_net(model, num_classes, input_size, with_spn=head == "spn")
    mapped = next((n for n, m in net.named_modules() if layer is not None and m is layer), None)
    if mapped is None or not mapped.startswith("features"):
        mapped = _last_spatial_name(net.features, input_size)
    return Attached(net, ["classifier", "spn"] if head == "spn" else ["classifier"], mapped)


def _last_spatial_name(features: nn.Module, input_size: int) -> str | None:
    """Dotted name (under ``features``) of the last module whose output is a 4-d map."""
    import torch

    last: list[str] = []
    names = {m: n for n, m in features.named_modules()}

    def record(mod: nn.Module, _i: object, out: object) -> None:
        if isinstance(out, torch.Tensor) and out.ndim == 4:
            last.append(names[mod])

    handles = [m.register_forward_hook(record) for m in features.modules() if m is not features]
    was = features.training
    try:
        features.eval()
        with torch.no_grad():
            features(torch.zeros(1, 3, input_size, input_size))
    finally:
        features.train(was)
        for h in handles:
            h.remove()
    return f"features.{last[-1]}" if last else "features"
