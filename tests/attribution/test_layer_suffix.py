"""Running only the network after a layer: it must match the full network with the layer replaced."""

from __future__ import annotations

from typing import Any

import pytest
import torch
from torch import nn

from cnnlens.attribution.engine.split import SplitError, suffix_runner
from tests.attribution.test_contract import assert_same, snapshot
from tests.conftest import tiny_loaded


def build(name: str) -> nn.Module:
    if name == "tiny":
        return tiny_loaded().module
    if name == "resnet18":
        import torchvision

        torch.manual_seed(0)
        return torchvision.models.resnet18().eval()
    import timm

    torch.manual_seed(0)
    return timm.create_model("tf_efficientnet_lite0", pretrained=False).eval()


CASES = [
    ("tiny", "bn1", "fx"),
    ("tiny", "features.0", "fx"),
    ("resnet18", "conv1", "fx"),
    ("resnet18", "layer2.0.conv1", "fx"),  # inside a residual block: the skip branch is a recorded value
    ("resnet18", "layer4.1.bn2", "fx"),  # followed by out += identity (in place)
    ("resnet18", "layer3", "fx"),
    ("lite0", "blocks.3.1.conv_pw", "fx"),
    ("lite0", "conv_head", "fx"),
    ("lite0", "bn2.act", "hook"),  # inside timm's untraceable BatchNormAct2d: falls back to hooks
]


def replaced_output(module: nn.Module, layer: str, image: torch.Tensor, acts: torch.Tensor) -> torch.Tensor:
    """The reference: the full network on the repeated image, the layer's output swapped by a hook."""

    def hook(_m: nn.Module, _i: Any, _out: torch.Tensor) -> torch.Tensor:
        return acts.clone()

    handle = module.get_submodule(layer).register_forward_hook(hook)
    try:
        with torch.no_grad():
            return module(image.expand(len(acts), -1, -1, -1))
    finally:
        handle.remove()


@pytest.mark.parametrize(("model", "layer", "mode"), CASES)
def test_suffix_matches_the_full_network(model: str, layer: str, mode: str) -> None:
    module = build(model)
    gen = torch.Generator().manual_seed(1)
    image = torch.randn(1, 3, 64, 64, generator=gen)
    before = snapshot(module)
    runner = suffix_runner(module, layer, image)
    assert runner.mode == mode
    a = runner.activation
    masks = (torch.rand(5, a.shape[1], 1, 1, generator=gen) > 0.5).float()
    acts = a * masks + 0.1 * torch.randn(5, *a.shape[1:], generator=gen)
    kept = acts.clone()
    out = runner(acts)
    assert torch.equal(acts, kept)  # the caller's batch is not modified in place
    expected = replaced_output(module, layer, image, acts)
    assert out.shape == expected.shape
    assert torch.allclose(out, expected, atol=1e-4, rtol=1e-4)
    assert torch.allclose(runner(a), runner.logits, atol=1e-4)
    assert_same(before, snapshot(module))


@pytest.mark.parametrize("mode", ["hook", "full"])
def test_fallback_modes_match(mode: str) -> None:
    module = build("resnet18")
    image = torch.randn(1, 3, 64, 64, generator=torch.Generator().manual_seed(2))
    runner = suffix_runner(module, "layer2.0.conv1", image, mode=mode)
    acts = runner.activation.repeat(3, 1, 1, 1) * torch.tensor([0.0, 0.5, 2.0]).view(3, 1, 1, 1)
    expected = replaced_output(module, "layer2.0.conv1", image, acts)
    assert torch.allclose(runner(acts), expected, atol=1e-4, rtol=1e-4)


def test_bad_arguments() -> None:
    module = build("tiny")
    image = torch.randn(1, 3, 32, 32)
    with pytest.raises(ValueError, match="unknown split mode"):
        suffix_runner(module, "bn1", image, mode="fast")
    with pytest.raises(ValueError, match="one image"):
        suffix_runner(module, "bn1", image.repeat(2, 1, 1, 1))
    with pytest.raises(KeyError, match="closest: features"):
        suffix_runner(module, "feature", image)
    runner = suffix_runner(module, "bn1", image)
    with pytest.raises(ValueError, match="do not fit layer 'bn1'"):
        runner(torch.zeros(2, 5, 32, 32))


def test_layer_that_does_not_change_the_output() -> None:
    class Dead(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv = nn.Conv2d(3, 2, 3)
            self.unused = nn.Conv2d(3, 2, 3)
            self.fc = nn.Linear(2, 2)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            self.unused(x)
            return self.fc(self.conv(x).mean(dim=(2, 3)))

    module = Dead().eval()
    image = torch.randn(1, 3, 8, 8)
    with pytest.raises(SplitError, match="output does not depend on layer 'unused'"):
        suffix_runner(module, "unused", image, mode="fx")
    runner = suffix_runner(module, "unused", image)  # only the full re-run reproduces it: all values 0
    assert runner.mode == "full"
    assert torch.allclose(runner(torch.zeros(3, 2, 6, 6)), runner.logits.expand(3, -1))
