"""Methods against closed forms on models whose answer is known."""

from __future__ import annotations

import torch
from torch import nn

from cnnlens.attribution import create


class Linear(nn.Module):
    """f(x) = W vec(x) + b: the gradient of class c is W[c]."""

    def __init__(self, classes: int = 4, shape: tuple[int, int, int] = (3, 8, 8)) -> None:
        super().__init__()
        self.conv_shape = shape
        self.stem = nn.Conv2d(3, 3, 1)  # identity conv, so the model has an input layer
        with torch.no_grad():
            self.stem.weight.copy_(torch.eye(3).view(3, 3, 1, 1))
            self.stem.bias.zero_()
        self.fc = nn.Linear(3 * 8 * 8, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.stem(x).flatten(1))


def test_saliency_of_a_linear_model_is_the_weight() -> None:
    torch.manual_seed(0)
    model = Linear()
    x = torch.randn(2, 3, 8, 8)
    exp = create("saliency", model).explain(x, target=[2, 3])
    for i, c in enumerate([2, 3]):
        expected = model.fc.weight[c].detach().view(3, 8, 8).abs().amax(0)
        assert torch.allclose(exp.attributions[i], expected, atol=1e-6)


class GapLinear(nn.Module):
    """conv features A -> global average pool -> linear W: Grad-CAM = ReLU(sum_k W[c,k] A_k) / (h*w)."""

    def __init__(self) -> None:
        super().__init__()
        self.features = nn.Sequential(nn.Conv2d(3, 5, 3, padding=1), nn.ReLU())
        self.fc = nn.Linear(5, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.features(x).mean(dim=(2, 3)))


def test_gradcam_on_gap_linear_matches_closed_form() -> None:
    torch.manual_seed(0)
    model = GapLinear().eval()
    x = torch.randn(2, 3, 8, 8)
    exp = create("gradcam", model, layer="features").explain(x, target=1)
    with torch.no_grad():
        acts = model.features(x)
        expected = torch.relu(torch.einsum("k,nkhw->nhw", model.fc.weight[1], acts)) / 64
    assert torch.allclose(exp.attributions, expected, atol=1e-6)
    assert exp.attributions.max() > 0


class PatchAdditive(nn.Module):
    """f(x)_c = sum over 8x8 patches p of w[c, p] * sum(x in p): occlusion with 8x8 windows at
    stride 8 and fill 0 recovers w[c, p] * sum(x in p) spread over the patch, exactly."""

    def __init__(self) -> None:
        super().__init__()
        self.pool = nn.Conv2d(3, 1, 8, stride=8, bias=False)  # sums each patch
        with torch.no_grad():
            self.pool.weight.fill_(1.0)
        self.fc = nn.Linear(16, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.pool(x).flatten(1))


def test_occlusion_is_exact_on_a_patch_additive_model() -> None:
    torch.manual_seed(0)
    model = PatchAdditive()
    x = torch.randn(1, 3, 32, 32)
    exp = create("occlusion", model, window=8, stride=8, fill=0.0, precision="fp32").explain(x, target=0)
    patch_sums = x.sum(1).unfold(1, 8, 8).unfold(2, 8, 8).sum((-1, -2))  # (1, 4, 4)
    contribution = model.fc.weight[0].detach().view(4, 4) * patch_sums[0]
    expected = contribution.repeat_interleave(8, 0).repeat_interleave(8, 1)
    assert torch.allclose(exp.attributions[0], expected, atol=1e-4)


def test_occlusion_windows_cover_every_pixel() -> None:
    from cnnlens.attribution.methods.perturbation import window_starts

    assert window_starts(10, 4, 3) == [0, 3, 6]
    assert window_starts(11, 4, 3) == [0, 3, 6, 7]
    assert window_starts(3, 4, 2) == [0]


def test_occlusion_batch_size_does_not_change_the_result() -> None:
    torch.manual_seed(0)
    model = PatchAdditive()
    x = torch.randn(1, 3, 32, 32)
    a = create("occlusion", model, window=6, stride=5, precision="fp32").explain(x, batch_size=1)
    b = create("occlusion", model, window=6, stride=5, precision="fp32").explain(x, batch_size=50)
    assert torch.allclose(a.attributions, b.attributions, atol=1e-5)


def test_probability_score() -> None:
    torch.manual_seed(0)
    model = PatchAdditive()
    x = torch.randn(1, 3, 32, 32)
    exp = create("occlusion", model, window=8, stride=8, score="probability", precision="fp32").explain(x)
    assert exp.attributions.abs().max() <= 1.0
