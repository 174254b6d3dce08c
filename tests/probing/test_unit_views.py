"""Activation maximisation and the deconvnet projection against a planted truth: unit 0 of
``CrossDetector`` is a red plus-sign template."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from cnnlens.errors import InputError, UnknownNameError
from cnnlens.models.hooks import hook_counts
from cnnlens.probing.deconv import deconv_projection
from cnnlens.probing.units import layer_output
from cnnlens.probing.visualization import FourierImage, visualize
from tests.probing.unit_toys import TOY_PREPROCESSING, CrossDetector, cross_template


def best_correlation(image: torch.Tensor, template: torch.Tensor) -> float:
    """Largest normalised cross-correlation of the red-minus-mean-of-others channel with ``template``."""
    signal = (image[0] - (image[1] + image[2]) / 2)[None, None]
    t = (template - template.mean()) / template.norm()
    k = template.shape[-1]
    windows = F.unfold(signal, k)  # (1, k*k, L)
    windows = windows - windows.mean(1, keepdim=True)
    ncc = (t.flatten()[None, :, None] * windows).sum(1) / windows.norm(dim=1).clamp(min=1e-8)
    return float(ncc.max())


def test_activation_maximisation_draws_the_planted_cross() -> None:
    model = CrossDetector()
    run = dict(layer="features.1", unit=0, preprocessing=TOY_PREPROCESSING, steps=60, size=16)
    result = visualize(model, neuron=True, **run)  # the unit at the centre: one cross
    template = cross_template(7)
    found = best_correlation(result.image, template)
    g = torch.Generator().manual_seed(5)
    random = [
        best_correlation(FourierImage((16, 16), 3, g, std=0.5)()[0].detach(), template) for _ in range(8)
    ]
    assert found > 0.6 and found > max(random) + 0.2
    assert result.curve[-1] > 5 * max(result.curve[0], 1e-3)
    assert hook_counts(model) == 0 and all(p.requires_grad for p in model.parameters())


def test_visualize_is_deterministic_with_a_seed() -> None:
    run = dict(layer="features.1", unit=1, preprocessing=TOY_PREPROCESSING, steps=5, size=16)
    a, b = visualize(CrossDetector(), seed=3, **run), visualize(CrossDetector(), seed=3, **run)
    c = visualize(CrossDetector(), seed=4, **run)
    assert torch.equal(a.image, b.image) and a.curve == b.curve
    assert not torch.equal(a.image, c.image)


def test_class_objective_raises_the_logit() -> None:
    result = visualize(CrossDetector(), target=0, preprocessing=TOY_PREPROCESSING, steps=20, size=16)
    assert result.curve[-1] > result.curve[0] + 0.1  # logit 0 is the mean of the cross unit
    assert result.objective == "class 0 (0)"


def test_deconv_puts_the_projection_on_the_cross() -> None:
    x = torch.full((1, 3, 32, 32), -1.0)  # a dark image (after normalisation) with a red cross at (20, 9)
    x[0, 0, 20, 6:13] = x[0, 0, 17:24, 9] = 2.0
    model = CrossDetector()
    proj = deconv_projection(model, x, "features.1", 0)
    assert proj.position == (20, 9) and proj.feature_size == (32, 32)
    energy = proj.pixels.abs().sum(0)
    assert energy[17:24, 6:13].sum() / energy.sum() > 0.99  # the receptive field of that location
    left, top, right, bottom = proj.box
    assert left >= 6 and top >= 17 and right <= 13 and bottom <= 24
    assert float(proj.pixels[0, 20, 9]) > 0  # the cross's own red pixels are projected positive
    assert hook_counts(model) == 0


def test_bad_unit_inputs() -> None:
    model = CrossDetector()
    x = torch.zeros(1, 3, 16, 16)
    with pytest.raises(InputError, match="out of range"):
        deconv_projection(model, x, "features.1", 2)
    with pytest.raises(UnknownNameError):
        deconv_projection(model, x, "nope", 0)
    with pytest.raises(InputError, match="feature map"):
        deconv_projection(model, x, "fc", 0)
    with pytest.raises(InputError, match="out of range"):
        visualize(model, layer="features.1", unit=-1, preprocessing=TOY_PREPROCESSING, steps=1)
    with pytest.raises(InputError, match="out of range"):
        visualize(model, target=7, preprocessing=TOY_PREPROCESSING, steps=1)
    with pytest.raises(InputError, match="either"):
        visualize(model, layer="features.1", unit=0, target=1, preprocessing=TOY_PREPROCESSING)


def test_layer_output_stops_the_forward_pass_at_the_layer() -> None:
    class Exploding(torch.nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            raise AssertionError("the layers after the probed one must not run")

    model = CrossDetector()
    model.pool = Exploding()  # type: ignore[assignment]
    x = torch.randn(2, 3, 16, 16)
    out = layer_output(model, "features.1", model.features[1], x)
    assert torch.equal(out, model.features(x))
    assert hook_counts(model) == 0


def test_a_unit_silent_on_grey_is_maximised_before_its_relu() -> None:
    model = CrossDetector()
    with torch.no_grad():
        model.features[0].bias[1] = -2.0  # unit 1 is zero after the ReLU on the starting image
    result = visualize(
        model, layer="features.1", unit=1, preprocessing=TOY_PREPROCESSING, steps=30, size=16, lr=0.1
    )
    assert result.curve[0] < 0 and result.curve[-1] > result.curve[0] + 0.3  # after the ReLU: no gradient
