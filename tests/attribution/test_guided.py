"""Guided Backpropagation, Deconvnet and Guided Grad-CAM on hand-built networks.

The hand-built network is x (4 values, a 1 x 2 x 2 image) -> W1 -> ReLU -> W2 -> ReLU -> W3 with

    W1 = [[1, -1, 0, 0], [0, 1, 1, 0], [-1, 0, 0, 1]],  W2 = [[5, -1, 2], [-1, 1, 1]],
    W3 = [[1, -1], [2, 1]],  x = [2, 1, 3, -1].

Forward: z1 = [1, 4, -3], h1 = [1, 4, 0]; z2 = [1, 3], h2 = [1, 3]. For class 0 the signal at h2 is
g = [1, -1]. By hand:

- plain gradient: [1, -1] -> W2^T -> [6, -2, 1] -> mask [1, 1, 0] -> [6, -2, 0] -> W1^T -> [6, -8, -2, 0]
- guided: relu([1, -1]) = [1, 0] -> [5, -1, 2] -> relu * mask -> [5, 0, 0] -> [5, -5, 0, 0]
- deconvnet: [1, 0] -> [5, -1, 2] -> relu -> [5, 0, 2] -> [3, -5, 0, 2]
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from cnnlens.attribution import create
from cnnlens.attribution.engine.runner import PassRunner
from cnnlens.attribution.methods.gradient import input_gradient
from cnnlens.attribution.methods.guided import backprop_rule, rule_gradient
from cnnlens.models.hooks import hook_counts
from tests.attribution.test_contract import assert_same, snapshot
from tests.conftest import tiny_loaded

X = torch.tensor([2.0, 1.0, 3.0, -1.0]).view(1, 1, 2, 2)
PLAIN = [6.0, -8.0, -2.0, 0.0]
GUIDED = [5.0, -5.0, 0.0, 0.0]
DECONV = [3.0, -5.0, 0.0, 2.0]


class HandNet(nn.Module):
    """The network of the module docstring; ``shared`` uses one ReLU module for both layers."""

    def __init__(self, act: type[nn.Module] = nn.ReLU, *, inplace: bool = False, shared: bool = False):
        super().__init__()
        self.l1 = nn.Linear(4, 3, bias=False)
        self.l2 = nn.Linear(3, 2, bias=False)
        self.l3 = nn.Linear(2, 2, bias=False)
        self.a1 = act(inplace=inplace)
        self.a2 = self.a1 if shared else act(inplace=inplace)
        with torch.no_grad():
            self.l1.weight.copy_(torch.tensor([[1.0, -1, 0, 0], [0, 1, 1, 0], [-1, 0, 0, 1]]))
            self.l2.weight.copy_(torch.tensor([[5.0, -1, 2], [-1, 1, 1]]))
            self.l3.weight.copy_(torch.tensor([[1.0, -1], [2, 1]]))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.l3(self.a2(self.l2(self.a1(self.l1(x.flatten(1))))))


VARIANTS = [
    pytest.param({}, id="relu"),
    pytest.param({"inplace": True}, id="inplace"),
    pytest.param({"shared": True}, id="shared"),
    pytest.param({"shared": True, "inplace": True}, id="shared-inplace"),
    pytest.param({"act": nn.ReLU6, "inplace": True}, id="relu6"),  # every value stays below 6
]


def signed(name: str, model: nn.Module, rule: str) -> list[float]:
    grads = rule_gradient(create(name, model), rule, X, torch.tensor([0]), 8)
    return grads.flatten().tolist()


@pytest.mark.parametrize("variant", VARIANTS)
def test_rules_on_the_hand_built_network(variant: dict[str, object]) -> None:
    model = HandNet(**variant)  # type: ignore[arg-type]
    before = snapshot(model)
    assert signed("guided_backprop", model, "guided") == GUIDED
    assert signed("deconvnet", model, "deconvnet") == DECONV
    assert (
        input_gradient(PassRunner(model, X.device), X, torch.tensor([0]), 1).flatten().tolist() == PLAIN
    )  # hooks gone
    guided = create("guided_backprop", model).explain(X, target=0).attributions
    deconv = create("deconvnet", model).explain(X, target=0).attributions
    assert guided.flatten().tolist() == [abs(v) for v in GUIDED]
    assert deconv.flatten().tolist() == [abs(v) for v in DECONV]
    assert_same(before, snapshot(model))


def test_relu6_saturation() -> None:
    """Above 6 a ReLU6 unit does not pass the guided signal (its derivative is 0); deconvnet ignores that."""
    model = nn.Sequential(nn.Flatten(), nn.Linear(1, 1, bias=False), nn.ReLU6(), nn.Linear(1, 1, bias=False))
    with torch.no_grad():
        model[1].weight.fill_(1.0)
        model[3].weight.fill_(2.0)
    for value, guided, deconv in [(3.0, 2.0, 2.0), (10.0, 0.0, 2.0), (-1.0, 0.0, 2.0)]:
        x = torch.full((1, 1, 1, 1), value)
        assert (
            rule_gradient(create("guided_backprop", model), "guided", x, torch.tensor([0]), 1).item()
            == guided
        )
        assert (
            rule_gradient(create("deconvnet", model), "deconvnet", x, torch.tensor([0]), 1).item() == deconv
        )


def test_rules_leave_the_tiny_cnn_unchanged(images: torch.Tensor) -> None:
    """TinyCNN uses one in-place ReLU twice; after the rules its gradients are the plain ones again."""
    model = tiny_loaded()
    targets = torch.tensor([0, 1, 2])
    plain = input_gradient(PassRunner(model.module, images.device), images, targets, 3)
    before = snapshot(model.module)
    guided = create("guided_backprop", model).explain(images, target=[0, 1, 2]).attributions
    assert not torch.allclose(guided, plain.abs().amax(1), atol=1e-4)
    create("deconvnet", model).explain(images)
    create("guided_gradcam", model).explain(images)
    assert_same(before, snapshot(model.module))
    assert torch.equal(input_gradient(PassRunner(model.module, images.device), images, targets, 3), plain)


def test_hooks_exist_only_inside_the_block() -> None:
    model = HandNet(shared=True, inplace=True)
    with backprop_rule(model, "guided") as calls:
        assert hook_counts(model) == 2  # a pre-hook (keeps the input) and a hook on the shared ReLU
        model(X)
        assert calls[0] == 2  # ...applied on both of its calls
    assert hook_counts(model) == 0
    with backprop_rule(model, "deconvnet") as calls:
        assert hook_counts(model) == 2  # a pre-hook (keeps the input) and a hook
        model(X)
        assert calls[0] == 2
    assert hook_counts(model) == 0
    with pytest.raises(RuntimeError, match="boom"), backprop_rule(model, "deconvnet"):
        raise RuntimeError("boom")
    assert hook_counts(model) == 0


def test_guided_gradcam_is_guided_backprop_times_gradcam(images: torch.Tensor) -> None:
    model = tiny_loaded()
    combined = create("guided_gradcam", model).explain(images).attributions
    guided = create("guided_backprop", model).explain(images).attributions
    cam = create("gradcam", model).explain(images).attributions
    assert torch.allclose(combined, guided * cam, atol=1e-6)
    assert combined.max() > 0


def test_guided_rules_on_efficientnet_lite0_with_relu6() -> None:
    """timm's BatchNormAct2d calls its ReLU6(inplace=True) ``act`` submodule: the rule reaches all 33."""
    from cnnlens.models import build_architecture

    module = build_architecture("tf_efficientnet_lite0", pretrained=False)[0].eval()
    x = torch.randn(1, 3, 64, 64, generator=torch.Generator().manual_seed(0))
    before = snapshot(module)
    with backprop_rule(module, "guided") as calls:
        guided = input_gradient(PassRunner(module, x.device), x, torch.tensor([3]), 1)
    assert calls[0] == 33
    plain = input_gradient(PassRunner(module, x.device), x, torch.tensor([3]), 1)
    assert not torch.allclose(guided, plain)
    assert_same(before, snapshot(module))


class SiLUNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3)
        self.act = nn.SiLU()
        self.fc = nn.Linear(4, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.act(self.conv(x)).mean(dim=(2, 3)))


class FunctionalReLUNet(SiLUNet):
    def __init__(self) -> None:
        super().__init__()
        self.act = nn.ReLU()  # present, but forward calls F.relu

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(F.relu(self.conv(x)).mean(dim=(2, 3)))


@pytest.mark.parametrize("name", ["guided_backprop", "deconvnet", "guided_gradcam"])
def test_networks_without_relu_modules_are_refused(name: str) -> None:
    x = torch.randn(1, 3, 8, 8)
    layer = {"layer": "conv"} if name == "guided_gradcam" else {}
    with pytest.raises(ValueError, match=r"has no nn.ReLU or nn.ReLU6 module \(activations: SiLU\)"):
        create(name, SiLUNet(), **layer).explain(x)
    with pytest.raises(ValueError, match="no ReLU module of FunctionalReLUNet ran"):
        create(name, FunctionalReLUNet(), **layer).explain(x)


def test_unknown_rule() -> None:
    with (
        pytest.raises(ValueError, match="rule must be one of guided, deconvnet"),
        backprop_rule(HandNet(), "lrp"),
    ):
        pass
