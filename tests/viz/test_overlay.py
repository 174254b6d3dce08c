"""Colour scales chosen by the values: closed-form checks on the choice and on the drawn pixels."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from matplotlib import colormaps
from PIL import Image

from cnnlens.attribution import Explanation
from cnnlens.errors import InputError
from cnnlens.viz import ColorScale, choose_scale, colorize, overlay


def rgb(cmap: str, position: float) -> tuple[int, ...]:
    return tuple(int(v * 255 + 0.5) for v in colormaps[cmap](position)[:3])


def test_all_positive_map_gets_a_sequential_scale_over_its_range() -> None:
    cam = np.linspace(2.8, 19.1, 100).reshape(10, 10)  # chelsea's CAM range: all positive
    scale = choose_scale(cam, percentile=100)
    assert scale == ColorScale("sequential", 2.8, pytest.approx(19.1), "jet")
    assert scale.ticks() == [2.8, pytest.approx(19.1)]
    colors = colorize(cam, scale=scale)
    assert tuple(colors[0, 0]) == rgb("jet", 0.0)  # the smallest value: the colour map's first colour
    assert tuple(colors[-1, -1]) == rgb("jet", 1.0)  # the largest: its last (not the red half only)
    mid = (2.8 + 19.1) / 2
    assert tuple(scale.colorize(np.array([mid]))[0]) == rgb("jet", 0.5)


def test_signed_map_gets_a_diverging_scale_centred_at_zero() -> None:
    signed = np.array([[-1.0, -0.5, 0.0, 0.5, 2.0]])
    scale = choose_scale(signed, percentile=100)
    assert scale.kind == "diverging" and scale.cmap == "bwr"
    assert scale.vmin == -2.0 and scale.vmax == 2.0 and scale.ticks() == [-2.0, 0.0, 2.0]
    colors = colorize(signed, scale=scale)
    assert tuple(colors[0, 2]) == rgb("bwr", 0.5) and min(colors[0, 2]) >= 254  # zero is white
    assert tuple(colors[0, 0]) == rgb("bwr", 0.25)  # -1 is halfway to full blue
    assert tuple(colors[0, 4]) == rgb("bwr", 1.0)


def test_all_negative_map_is_sequential_reversed_and_tiny_noise_is_not_a_sign() -> None:
    neg = -np.linspace(1.0, 5.0, 5)[None]
    scale = choose_scale(neg, percentile=100)
    assert scale.kind == "sequential" and scale.cmap == "jet_r" and (scale.vmin, scale.vmax) == (-5.0, -1.0)
    assert tuple(colorize(neg, scale=scale)[0, -1]) == rgb("jet", 1.0)  # the most negative: strongest
    noisy = np.array([[-1e-9, 0.0, 3.0]])  # a ReLU map with float noise is still one-signed
    assert choose_scale(noisy).kind == "sequential"


def test_robust_top_and_degenerate_maps() -> None:
    spike = np.zeros((20, 20))
    spike[0, 0] = 1000.0
    spike[5:, :] = 1.0
    assert choose_scale(spike).vmax == pytest.approx(1.0)  # one extreme pixel does not wash out the rest
    flat = np.full((3, 3), 4.0)
    scale = choose_scale(flat)
    assert scale.kind == "sequential" and np.all(scale.normalize(flat) == 0.0)
    with pytest.raises(InputError):
        choose_scale()
    with pytest.raises(InputError):
        choose_scale(np.full((2, 2), np.nan))


def test_maps_compared_side_by_side_share_one_scale() -> None:
    a = np.linspace(0, 1, 16).reshape(4, 4)
    b = 10 * a
    shared = choose_scale(a, b, percentile=100)
    assert (shared.vmin, shared.vmax) == (0.0, 10.0)
    assert colorize(a, scale=shared)[-1, -1].tolist() == list(rgb("jet", 0.1))  # a's max is 1/10 of b's
    mixed = choose_scale(a, -b, percentile=100)  # one map negative: the pair is diverging
    assert mixed.kind == "diverging" and mixed.vmax == 10.0


def test_css_gradient_states_the_scale() -> None:
    scale = choose_scale(np.array([[-1.0, 1.0]]), percentile=100)
    css = scale.css_gradient(steps=3)
    assert css.startswith("linear-gradient(to right, ")
    assert "rgb(255,254,254) 50%" in css  # white (bwr's middle entry) in the middle
    assert scale.describe() == "diverging (bwr) -1 to 1, white at 0"


def test_overlay_and_explanation_render_use_the_values_scale() -> None:
    image = Image.new("RGB", (8, 8), (0, 0, 0))
    cam = torch.linspace(2.8, 19.1, 64).reshape(1, 8, 8)
    exp = Explanation(cam, torch.tensor([0]), torch.tensor([0.9]), method="cam", signed=True)
    assert exp.color_scale().kind == "sequential"  # signed method, one-signed values: sequential
    drawn = np.asarray(exp.render(image, alpha=1.0))
    expected = colorize(cam[0].numpy())
    assert np.array_equal(drawn, expected)
    # the old rendering (a zero-centred diverging scale) would draw the smallest value nearly white
    assert tuple(drawn[0, 0]) == rgb("jet", 0.0)
    half = np.asarray(overlay(image, cam[0].numpy(), alpha=0.5))
    assert np.abs(half.astype(int) - np.asarray(expected) // 2).max() <= 1  # blended over black
    with pytest.raises(InputError):
        overlay(image, cam.numpy(), alpha=0.5)
