"""The model zoo every registered method is run on: stock architectures with random weights at 64 px.

Shared by tests/attribution/test_zoo_invariants.py and bench/method_matrix.py (which prints the
matrix of docs/methods.md).
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torchvision
from torch import nn

from cnnlens.attribution import Explanation, create, get_method
from cnnlens.errors import CnnlensError
from cnnlens.models import LoadedModel, load_model

SIZE = 64


def _torchvision(name: str) -> Callable[[], nn.Module]:
    return lambda: getattr(torchvision.models, name)(weights=None)


def _vit() -> nn.Module:
    import timm

    return timm.create_model("vit_tiny_patch16_224", pretrained=False, img_size=SIZE)


def _tinycnn() -> LoadedModel:
    return load_model("tinycnn", pretrained=False)


#: What each model brings: residual adds and one in-place ReLU called three times per block
#: (ResNet-50), batch norm after every conv and five max pools (VGG19-BN), concatenations and a
#: functional in-place ReLU (DenseNet-121), Hardswish and squeeze-excitation (MobileNetV3), SiLU and
#: stochastic depth (EfficientNet-B0), layer norm, GELU and layer scale (ConvNeXt), tokens and
#: attention (ViT), the project's own small CNN.
ZOO: dict[str, Callable[[], nn.Module | LoadedModel]] = {
    "resnet50": _torchvision("resnet50"),
    "vgg19_bn": _torchvision("vgg19_bn"),
    "densenet121": _torchvision("densenet121"),
    "mobilenet_v3_small": _torchvision("mobilenet_v3_small"),
    "efficientnet_b0": _torchvision("efficientnet_b0"),
    "convnext_tiny": _torchvision("convnext_tiny"),
    "vit_tiny": _vit,
    "tinycnn": _tinycnn,
}

#: Cheap settings: few samples, steps, masks and windows (the point is that every method runs).
CHEAP = {
    "window": 16,
    "stride": 16,
    "fixed_window": 32,
    "n_samples": 8,
    "n_masks": 8,
    "steps": 4,
    "n_segments": 8,
    "n_baselines": 2,
}


def build(name: str) -> nn.Module | LoadedModel:
    torch.manual_seed(0)
    model = ZOO[name]()
    (model.module if isinstance(model, LoadedModel) else model).eval()
    return model


def cheap(method: str) -> dict[str, object]:
    params = get_method(method).hyperparameters()
    return {k: v for k, v in CHEAP.items() if k in params}


def image(seed: int = 0) -> torch.Tensor:
    return torch.rand(1, 3, SIZE, SIZE, generator=torch.Generator().manual_seed(seed))


def run(method: str, model: nn.Module | LoadedModel, x: torch.Tensor) -> tuple[str, Explanation | None]:
    """``"ok"`` and the explanation when ``method`` explains ``model``, else the one line it stopped with.

    Raises:
        AssertionError: The method failed with something other than a one-line cnnlens error, or
            returned non-finite maps.
    """
    try:
        exp = create(method, model, **cheap(method)).explain(x)
    except CnnlensError as error:
        line = str(error)
        assert line and "\n" not in line, f"{method}: not one line: {line!r}"
        return line, None
    assert torch.isfinite(exp.attributions).all(), method
    assert exp.attributions.shape == (len(x), SIZE, SIZE), method
    return "ok", exp
