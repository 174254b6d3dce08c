"""Gradient x input, SmoothGrad (and variants), Integrated Gradients against closed forms and properties."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from cnnlens.attribution import create
from cnnlens.attribution.methods.gradient import path_nodes, pixel_bounds
from tests.attribution.test_closed_forms import Linear
from tests.conftest import tiny_loaded


def linear_weight(model: Linear, c: int) -> torch.Tensor:
    return model.fc.weight[c].detach().view(3, 8, 8)


@pytest.fixture
def linear() -> Linear:
    torch.manual_seed(0)
    return Linear()


@pytest.fixture
def x8() -> torch.Tensor:
    return torch.randn(2, 3, 8, 8, generator=torch.Generator().manual_seed(3))


# -- gradient x input ----------------------------------------------------------------------------


def test_gradxinput_of_a_linear_model(linear: Linear, x8: torch.Tensor) -> None:
    exp = create("gradxinput", linear).explain(x8, target=[0, 3])
    for i, c in enumerate([0, 3]):
        expected = (linear_weight(linear, c) * x8[i]).sum(0)
        assert torch.allclose(exp.attributions[i], expected, atol=1e-6)
    assert exp.signed


# -- SmoothGrad ------------------------------------------------------------------------------------


def test_smoothgrad_without_noise_is_saliency(images: torch.Tensor) -> None:
    model = tiny_loaded()
    saliency = create("saliency", model).explain(images).attributions
    plain = create("smoothgrad", model, noise=0.0, n_samples=4).explain(images).attributions
    squared = create("smoothgrad", model, noise=0.0, n_samples=4, variant="squared").explain(images)
    vargrad = create("smoothgrad", model, noise=0.0, n_samples=4, variant="vargrad").explain(images)
    assert torch.allclose(plain, saliency, atol=1e-6)
    assert torch.allclose(squared.attributions, saliency**2, atol=1e-6)
    assert torch.allclose(vargrad.attributions, torch.zeros_like(saliency), atol=1e-6)


def test_smoothgrad_of_a_linear_model_is_noise_free(linear: Linear, x8: torch.Tensor) -> None:
    """The gradient of a linear model is the same at every noisy point: mean = W, variance = 0."""
    w = linear_weight(linear, 1)
    sg = create("smoothgrad", linear, noise=0.5, n_samples=16).explain(x8, target=1)
    var = create("smoothgrad", linear, noise=0.5, n_samples=16, variant="vargrad").explain(x8, target=1)
    assert torch.allclose(sg.attributions, w.abs().amax(0).expand(2, 8, 8), atol=1e-6)
    assert var.attributions.abs().max() < 1e-9


def test_smoothgrad_noise_averages_the_gradient(images: torch.Tensor) -> None:
    model = tiny_loaded()
    noisy = create("smoothgrad", model, noise=0.3, n_samples=16).explain(images, target=0).attributions
    clean = create("saliency", model).explain(images, target=0).attributions
    vargrad = create("smoothgrad", model, noise=0.3, n_samples=16, variant="vargrad").explain(
        images, target=0
    )
    assert not torch.allclose(noisy, clean, atol=1e-4)
    assert vargrad.attributions.max() > 0


def test_smoothgrad_is_seeded_and_leaves_the_global_rng_alone(images: torch.Tensor) -> None:
    model = tiny_loaded()
    state = torch.random.get_rng_state()
    a = create("smoothgrad", model, noise=0.2, n_samples=8, seed=1).explain(images).attributions
    b = create("smoothgrad", model, noise=0.2, n_samples=8, seed=1).explain(images, batch_size=3)
    c = create("smoothgrad", model, noise=0.2, n_samples=8, seed=2).explain(images).attributions
    assert torch.equal(torch.random.get_rng_state(), state)
    assert torch.allclose(a, b.attributions, atol=1e-6)  # the batch size does not change the draws
    assert not torch.allclose(a, c, atol=1e-4)


@pytest.mark.parametrize(
    ("params", "message"),
    [
        ({"noise": -0.1}, "noise must be"),
        ({"n_samples": 0}, "n_samples must be a positive integer"),
        ({"n_samples": 2.5}, "n_samples must be a positive integer"),
        ({"variant": "var"}, "variant must be one of smoothgrad, squared, vargrad"),
    ],
)
def test_smoothgrad_bad_parameters(params: dict[str, object], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        create("smoothgrad", tiny_loaded(), **params)


# -- Integrated Gradients ---------------------------------------------------------------------------


@pytest.mark.parametrize("rule", ["gauss_legendre", "trapezoid", "left", "right", "middle"])
def test_integrated_gradients_of_a_linear_model(linear: Linear, x8: torch.Tensor, rule: str) -> None:
    """On f(x) = Wx + b, IG = (x - baseline) * W exactly, whatever the rule, and the gap is 0."""
    baseline = torch.randn(3, 8, 8, generator=torch.Generator().manual_seed(5))
    exp = create("integrated_gradients", linear, baseline=baseline, steps=3, rule=rule).explain(x8, target=2)
    expected = ((x8 - baseline) * linear_weight(linear, 2)).sum(1)
    assert torch.allclose(exp.attributions, expected, atol=1e-5)
    assert exp.extras["completeness_gap"].shape == (2,)
    assert exp.extras["completeness_gap"].max() < 1e-4


def test_integrated_gradients_completeness_on_a_relu_network(images: torch.Tensor) -> None:
    model = tiny_loaded()
    coarse = create("integrated_gradients", model, baseline="zero", steps=2, rule="trapezoid")
    coarse_gap = coarse.explain(images, target=1).extras["completeness_gap"]
    fine = create("integrated_gradients", model, baseline="zero", steps=256).explain(images, target=1)
    with torch.no_grad():
        difference = model.module(images)[:, 1] - model.module(torch.zeros_like(images))[:, 1]
    gap = (fine.attributions.sum(dim=(1, 2)) - difference).abs()
    assert torch.allclose(fine.extras["completeness_gap"], gap, atol=1e-5)  # the reported gap is the gap
    assert (gap < 2e-3 * difference.abs()).all()  # relative to f(x) - f(0), ~0.03 here
    assert (coarse_gap > 0.1 * difference.abs()).all()  # two steps miss by >10% on this network
    assert (fine.extras["completeness_gap"] < coarse_gap / 50).all()
    assert fine[1].extras["completeness_gap"].shape == (1,)


def test_black_baseline_is_pixel_zero_under_the_preprocessing(images: torch.Tensor) -> None:
    model = tiny_loaded()  # mean 0.5, std 0.25: black is -2 in every channel
    black = create("integrated_gradients", model, steps=4).explain(images).attributions
    given = create("integrated_gradients", model, steps=4, baseline=torch.full((3, 32, 32), -2.0))
    assert torch.allclose(black, given.explain(images).attributions, atol=1e-6)
    lo, hi = pixel_bounds(model, images)
    assert torch.allclose(lo, torch.full((1, 3, 1, 1), -2.0))
    assert torch.allclose(hi, torch.full((1, 3, 1, 1), 2.0))


def test_blur_and_noise_baselines(images: torch.Tensor) -> None:
    model = tiny_loaded()
    ig = create("integrated_gradients", model, baseline="blur", blur_sigma=3.0, steps=4)
    constant = torch.full((1, 3, 32, 32), 0.7)
    assert ig.explain(constant).attributions.abs().max() < 1e-6  # a blurred constant image is itself
    blurred = ig.baselines(images)
    assert blurred.shape == images.shape
    assert blurred.std() < images.std()
    noise = create("integrated_gradients", model, baseline="noise", seed=4)
    draws = noise.baselines(images)
    assert torch.equal(draws, noise.baselines(images))
    assert draws.min() >= -2.0
    assert draws.max() <= 2.0
    assert torch.equal(draws[0], draws[1])  # each image gets the seed's draw, whatever its position
    assert not torch.equal(
        draws, create("integrated_gradients", model, baseline="noise", seed=5).baselines(images)
    )


def test_quadrature_rules() -> None:
    for rule in ("gauss_legendre", "trapezoid", "left", "right", "middle"):
        alphas, weights = path_nodes(rule, 5)
        assert len(alphas) == 5
        assert sum(weights) == pytest.approx(1.0)
        assert all(0 <= a <= 1 for a in alphas)
    alphas, weights = path_nodes("gauss_legendre", 2)  # exact up to degree 3
    assert sum(w * a**3 for a, w in zip(alphas, weights)) == pytest.approx(0.25)


@pytest.mark.parametrize(
    ("params", "message"),
    [
        ({"baseline": "white"}, "baseline must be one of black, blur, noise, zero or a tensor"),
        ({"baseline": torch.zeros(3, 32, 32, dtype=torch.long)}, "finite float tensor"),
        ({"steps": 0}, "steps must be a positive integer"),
        ({"rule": "simpson"}, "rule must be one of"),
        ({"rule": "trapezoid", "steps": 1}, "trapezoid rule needs steps >= 2"),
        ({"blur_sigma": 0.0}, "blur_sigma must be"),
    ],
)
def test_integrated_gradients_bad_parameters(params: dict[str, object], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        create("integrated_gradients", tiny_loaded(), **params)


def test_baseline_of_the_wrong_shape(images: torch.Tensor) -> None:
    ig = create("integrated_gradients", tiny_loaded(), baseline=torch.zeros(3, 16, 16))
    with pytest.raises(ValueError, match=r"baseline tensor has shape \(3, 16, 16\)"):
        ig.explain(images)
    assert ig.get_params()["baseline"] == "tensor(3, 16, 16)"


def test_model_without_preprocessing_reads_pixels_in_0_1() -> None:
    model = nn.Sequential(nn.Conv2d(3, 2, 1), nn.Flatten(), nn.Linear(2 * 4 * 4, 2))
    lo, hi = pixel_bounds(model, torch.zeros(1, 3, 4, 4))
    assert lo.sum() == 0
    assert hi.sum() == 3


def test_integrated_gradients_batching_and_per_image_baselines(images: torch.Tensor) -> None:
    model = tiny_loaded()
    baselines = torch.randn(3, 3, 32, 32, generator=torch.Generator().manual_seed(6))
    ig = create("integrated_gradients", model, baseline=baselines, steps=6)
    whole = ig.explain(images, target=2, batch_size=18)
    odd = ig.explain(images, target=2, batch_size=5)  # chunks that straddle two images
    assert torch.allclose(whole.attributions, odd.attributions, atol=1e-6)
    for i in range(3):
        one = create("integrated_gradients", model, baseline=baselines[i], steps=6).explain(
            images[i], target=2
        )
        assert torch.allclose(one.attributions[0], whole.attributions[i], atol=1e-6)
