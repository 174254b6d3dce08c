"""Invariants after every method on a small zoo of stock models: no hook left, state_dict bit-identical,
train/eval and requires_grad restored, after a normal call and after a KeyboardInterrupt raised inside a
hook in the middle of the method's passes."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from cnnlens.attribution import create, get_method, method_names
from cnnlens.models import LoadedModel, load_model
from tests.attribution.test_contract import assert_same, small, snapshot

pytestmark = pytest.mark.slow

#: Stock architectures with what the methods must cope with: residual adds and in-place ReLUs used
#: several times (ResNet-18), Hardswish, squeeze-excitation and a multi-layer head (MobileNetV3).
ZOO = ("resnet18", "mobilenet_v3_small")


@pytest.fixture(scope="module", params=ZOO)
def zoo_model(request: pytest.FixtureRequest) -> LoadedModel:
    torch.manual_seed(0)
    return load_model(request.param, pretrained=False)


@pytest.fixture(scope="module")
def x() -> torch.Tensor:
    return torch.rand(2, 3, 64, 64, generator=torch.Generator().manual_seed(0))


def applicable(model: LoadedModel) -> list[str]:
    return [m for m in method_names() if get_method(m).unsupported(model.module) is None]


def settings(name: str) -> dict[str, object]:
    params = get_method(name).hyperparameters()
    return small(name) | {
        k: v for k, v in {"window": 16, "stride": 16, "fixed_window": 32}.items() if k in params
    }


def test_every_method_leaves_every_zoo_model_as_found(zoo_model: LoadedModel, x: torch.Tensor) -> None:
    module = zoo_model.module
    module.train()  # found in training mode: stays in training mode
    next(iter(module.parameters())).requires_grad_(False)  # ...and keeps its own requires_grad choices
    try:
        for name in applicable(zoo_model):
            before = snapshot(module)
            exp = create(name, zoo_model, **settings(name)).explain(x)
            assert torch.isfinite(exp.attributions).all(), name
            assert_same(before, snapshot(module))
    finally:
        module.eval()
        next(iter(module.parameters())).requires_grad_(True)


class Interrupt(KeyboardInterrupt):
    """Ctrl-C, pressed while the method's n-th forward pass through the default layer runs."""


@pytest.mark.parametrize("press_at", [1, 3])
def test_ctrl_c_inside_a_hook_leaves_every_zoo_model_as_found(
    zoo_model: LoadedModel, x: torch.Tensor, press_at: int
) -> None:
    module = zoo_model.module.eval()
    layer: nn.Module = dict(module.named_modules())[str(zoo_model.default_layer)]
    interrupted = 0
    for name in applicable(zoo_model):
        before = snapshot(module)
        calls = [0]

        def press(_m: nn.Module, _i: object, _o: object, calls: list[int] = calls) -> None:
            calls[0] += 1
            if calls[0] == press_at:
                raise Interrupt

        handle = layer.register_forward_hook(press)
        try:
            create(name, zoo_model, **settings(name)).explain(x)
        except Interrupt:
            interrupted += 1
        finally:
            handle.remove()
        assert calls[0] <= press_at, name  # no pass through the layer after the interrupt
        assert_same(before, snapshot(module))
    assert interrupted >= (len(applicable(zoo_model)) if press_at == 1 else 10)
