"""CAM, Grad-CAM++ and Layer-CAM against closed forms on networks whose head is known."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from cnnlens.attribution import create
from tests.attribution.test_closed_forms import GapLinear
from tests.conftest import tiny_loaded


@pytest.fixture
def gap() -> GapLinear:
    """features (8 x 8, stride 1, so no upsampling) -> mean over positions -> fc: logits = W GAP(A) + b."""
    torch.manual_seed(0)
    return GapLinear().eval()


@pytest.fixture
def x8() -> torch.Tensor:
    return torch.randn(2, 3, 8, 8, generator=torch.Generator().manual_seed(2))


def test_cam_is_gradcam_up_to_scale_on_gap_linear(gap: GapLinear, x8: torch.Tensor) -> None:
    cam = create("cam", gap, layer="features").explain(x8, target=1)
    gradcam = create("gradcam", gap, layer="features").explain(x8, target=1)
    assert torch.allclose(torch.relu(cam.attributions), 64 * gradcam.attributions, atol=1e-5)
    assert cam.attributions.min() < 0  # CAM keeps the sign, as in the paper
    assert cam.signed


def test_cam_mean_plus_bias_is_the_logit(gap: GapLinear, x8: torch.Tensor) -> None:
    cam = create("cam", gap, layer="features").explain(x8, target=[0, 2])
    with torch.no_grad():
        logits = gap(x8)
    expected = torch.stack([logits[0, 0], logits[1, 2]]) - gap.fc.bias.detach()[[0, 2]]
    assert torch.allclose(cam.attributions.mean(dim=(1, 2)), expected, atol=1e-5)


def at_layer_resolution(name: str, model: object, x: torch.Tensor, target: int) -> torch.Tensor:
    """The method's map before upsampling (ReLU and bilinear upsampling do not commute)."""
    method = create(name, model)  # type: ignore[arg-type]
    return method._attribute(x, torch.full((len(x),), target), 8)  # type: ignore[return-value]


def test_cam_on_the_tiny_cnn_and_its_default_layer(images: torch.Tensor) -> None:
    model = tiny_loaded()
    assert create("cam", model).explain(images).layer == "features"
    cam = at_layer_resolution("cam", model, images, 1)
    gradcam = at_layer_resolution("gradcam", model, images, 1)
    assert cam.shape == (3, 16, 16)
    assert torch.allclose(torch.relu(cam), 16 * 16 * gradcam, atol=1e-5)


class VGGHead(nn.Module):
    """features -> flatten -> Linear -> ReLU -> Linear: no GAP + linear head."""

    def __init__(self) -> None:
        super().__init__()
        self.features = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU())
        self.classifier = nn.Sequential(nn.Linear(4 * 8 * 8, 16), nn.ReLU(), nn.Linear(16, 3))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(x).flatten(1))


class MaxPoolHead(GapLinear):
    """Has an nn.Linear(C -> K), but after global *max* pooling: CAM's identity does not hold."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.features(x).amax(dim=(2, 3)))


def test_cam_refuses_other_heads(x8: torch.Tensor) -> None:
    with pytest.raises(ValueError, match="ends in several linear layers, not one .*; use gradcam"):
        create("cam", VGGHead(), layer="features")
    with pytest.raises(ValueError, match="logits differ from that by up to"):
        create("cam", MaxPoolHead(), layer="features").explain(x8)
    model = tiny_loaded()  # the layer before the last conv: a conv lies between it and the pooling
    with pytest.raises(ValueError, match=r"layer 'relu' \(4 channels\)"):
        create("cam", model, layer="relu").explain(torch.randn(1, 3, 32, 32))


def test_gradcampp_closed_form_on_gap_linear(gap: GapLinear, x8: torch.Tensor) -> None:
    """dy/dA_k = w_k / Z (Z = h w) everywhere, so alpha_k = Z / (2 Z + w_k S_k) with S_k = sum(A_k),
    and Grad-CAM++ = ReLU(sum_k ReLU(w_k) Z / (2 Z + w_k S_k) A_k)."""
    exp = create("gradcampp", gap, layer="features").explain(x8, target=0)
    with torch.no_grad():
        acts = gap.features(x8)
    w = gap.fc.weight.detach()[0].view(1, -1, 1, 1)
    s = acts.sum(dim=(2, 3), keepdim=True)
    expected = torch.relu((torch.relu(w) * 64 / (128 + w * s) * acts).sum(1))
    assert torch.allclose(exp.attributions, expected, atol=1e-5)
    assert exp.attributions.max() > 0


def test_gradcampp_ignores_channels_with_negative_weight(gap: GapLinear, x8: torch.Tensor) -> None:
    with torch.no_grad():
        gap.fc.weight[1] = torch.tensor([-1.0, -2.0, -0.5, -1.0, -3.0])
    assert create("gradcampp", gap, layer="features").explain(x8, target=1).attributions.abs().max() == 0
    assert create("layercam", gap, layer="features").explain(x8, target=1).attributions.abs().max() == 0
    with torch.no_grad():
        gap.fc.weight[1] = 0.0  # zero gradients: no division by zero
    zero = create("gradcampp", gap, layer="features").explain(x8, target=1).attributions
    assert torch.isfinite(zero).all()
    assert zero.abs().max() == 0


class SpatialHead(GapLinear):
    """logits = W (sum_ij M_ij A_ij) + b, M a fixed non-negative spatial weighting: dy/dA_kij = W_k M_ij."""

    def __init__(self) -> None:
        super().__init__()
        self.register_buffer("m", torch.linspace(0, 1, 64).view(8, 8))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc((self.features(x) * self.m).sum(dim=(2, 3)))


def test_layercam_closed_form_with_spatially_varying_gradients(x8: torch.Tensor) -> None:
    """Layer-CAM = ReLU(sum_k ReLU(W_k M_ij) A_kij) = M_ij sum_k ReLU(W_k) A_kij; Grad-CAM averages M out."""
    torch.manual_seed(1)
    model = SpatialHead().eval()
    exp = create("layercam", model, layer="features").explain(x8, target=2)
    gradcam = create("gradcam", model, layer="features").explain(x8, target=2)
    with torch.no_grad():
        acts = model.features(x8)
    w = model.fc.weight.detach()[2].view(1, -1, 1, 1)
    expected = model.m * (torch.relu(w) * acts).sum(1)
    assert torch.allclose(exp.attributions, expected, atol=1e-6)
    assert exp.attributions[:, 0, 0].abs().max() == 0  # M is 0 there
    assert gradcam.attributions[:, 0, 0].max() > 0


def test_layercam_on_gap_linear(gap: GapLinear, x8: torch.Tensor) -> None:
    exp = create("layercam", gap, layer="features").explain(x8, target=0)
    with torch.no_grad():
        acts = gap.features(x8)
    w = gap.fc.weight.detach()[0].view(1, -1, 1, 1)
    assert torch.allclose(exp.attributions, (torch.relu(w) * acts).sum(1) / 64, atol=1e-6)


@pytest.mark.slow
def test_cam_family_on_efficientnet_lite0(lite0: object) -> None:
    """The real default model: CAM finds the classifier after bn2 + SelectAdaptivePool2d."""
    from cnnlens.data import load_sample

    x = lite0.prepare(load_sample("chelsea"))  # type: ignore[attr-defined]
    assert create("cam", lite0).explain(x).layer == "bn2"  # type: ignore[arg-type]
    top = int(lite0.logits(x).argmax())  # type: ignore[attr-defined]
    cam = at_layer_resolution("cam", lite0, x, top)
    gradcam = at_layer_resolution("gradcam", lite0, x, top)
    assert cam.shape == (1, 7, 7)
    assert torch.allclose(torch.relu(cam), 49 * gradcam, atol=1e-4, rtol=1e-4)
    assert gradcam.max() > 0
    with pytest.raises(ValueError, match=r"layer 'blocks.6' \(320 channels\)"):
        create("cam", lite0, layer="blocks.6").explain(x)  # type: ignore[arg-type]
