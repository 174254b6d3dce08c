"""Invariants after every method on a small zoo of stock models: no hook left, state_dict bit-identical,
train/eval and requires_grad restored, after a normal call and after a KeyboardInterrupt raised inside a
hook in the middle of the method's passes; and the model-zoo matrix (tests/attribution/zoo.py): each
method on each zoo model works or stops with one clear line, leaving the model as found."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from cnnlens.attribution import create, get_method, method_names
from cnnlens.attribution.methods.gradient import make_baselines
from cnnlens.models import LoadedModel, load_model
from tests.attribution import zoo
from tests.attribution.test_contract import assert_same, small, snapshot

pytestmark = pytest.mark.slow

#: Stock architectures with what the methods must cope with: residual adds and in-place ReLUs used
#: several times (ResNet-18), Hardswish, squeeze-excitation and a multi-layer head (MobileNetV3).
ZOO = ("resnet18", "mobilenet_v3_small")
TRACED = ("deeplift", "deeplift_shap")


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
    # DeepLIFT runs a traced copy whose leaf modules are the model's own (its containers are not called)
    leaf = next(m for m in layer.modules() if not list(m.children()))
    interrupted = 0
    for name in applicable(zoo_model):
        before = snapshot(module)
        calls = [0]
        hooked = leaf if name in TRACED else layer

        def press(_m: nn.Module, _i: object, _o: object, calls: list[int] = calls) -> None:
            calls[0] += 1
            if calls[0] == press_at:
                raise Interrupt

        handle = hooked.register_forward_hook(press)
        try:
            create(name, zoo_model, **settings(name)).explain(x)
        except Interrupt:
            interrupted += 1
        finally:
            handle.remove()
        assert calls[0] <= press_at, name  # no pass through the layer after the interrupt
        assert_same(before, snapshot(module))
    assert interrupted >= (len(applicable(zoo_model)) if press_at == 1 else 10)


#: On the large zoo models, one method per mechanism (the whole registry runs on tinycnn here, on
#: ResNet-18 and MobileNetV3 above, and on every zoo model in bench/method_matrix.py, whose table is in
#: docs/methods.md): CAM hooks at a layer, a plain gradient pass, hooked backward rules, the traced
#: functional copy, zennit's composites and canonizers.
MECHANISMS = ("gradcam", "saliency", "guided_backprop", "deeplift", "lrp")
#: On the ViT, every method that reads a layer's feature maps: they read the patch tokens of the last
#: block's first norm as a grid (cnnlens.models.tokens).
VIT_LAYER_METHODS = (
    "gradcam", "gradcampp", "layercam", "cam", "scorecam", "ablationcam", "guided_gradcam",
    "layer_gradxact", "layer_ig", "layer_gradshap",
)  # fmt: skip
#: Networks of operations DeepLIFT's rules are exact for (no layer norm, softmax or division).
EXACT = ("resnet50", "vgg19_bn", "densenet121", "mobilenet_v3_small", "efficientnet_b0", "tinycnn")


@pytest.mark.parametrize("arch", list(zoo.ZOO))
def test_zoo_matrix(arch: str) -> None:
    model = zoo.build(arch)
    module = model.module if isinstance(model, LoadedModel) else model
    x = zoo.image()
    names = method_names() if arch == "tinycnn" else MECHANISMS
    if arch == "vit_tiny":
        names = tuple(dict.fromkeys(MECHANISMS + VIT_LAYER_METHODS))
    outcome, explanations = {}, {}
    for name in names:
        before = snapshot(module)
        # "ok" or its one line (asserted to be one line)
        outcome[name], explanations[name] = zoo.run(name, model, x)
        assert_same(before, snapshot(module))
    assert outcome["saliency"] == outcome["deeplift"] == "ok"
    if arch == "vit_tiny":  # zennit has no rule for attention and layer norm: NaN relevance, one line
        assert "non-finite relevance" in outcome["lrp"]
        assert "reads the class token" in outcome["cam"]
        for name in set(VIT_LAYER_METHODS) - {"cam", "guided_gradcam"}:
            exp = explanations[name]
            assert outcome[name] == "ok" and exp is not None and exp.layer == "blocks.11.norm1", name
    else:
        assert outcome["lrp"] == "ok"
    if not any(isinstance(m, (nn.ReLU, nn.ReLU6)) for m in module.modules()):
        assert "has no nn.ReLU or nn.ReLU6 module" in outcome["guided_backprop"]
    if arch in EXACT:  # the attributions sum to f(x) - f(black) within 1e-3 of its size
        exp = explanations["deeplift"]
        assert exp is not None
        black = make_baselines(model, "black", x, 1.0, 0)
        with torch.no_grad():
            diff = (module(x) - module(black)).gather(1, exp.targets[:, None]).abs()
        assert (exp.extras["completeness_gap"] <= 1e-3 * diff[:, 0]).all()
