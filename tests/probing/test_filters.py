"""First-layer filters are shown as pictures (and only those); activation maps rank channels."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from cnnlens.errors import CnnlensError, InputError
from cnnlens.models.hooks import hook_counts
from cnnlens.probing.filters import first_layer_filters, strongest_activations
from tests.conftest import tiny_loaded
from tests.probing.toys import CROSS, CrossDetector, noise


def test_first_layer_filters_are_the_weights_scaled_per_filter() -> None:
    model = CrossDetector()
    filters = first_layer_filters(model)
    assert filters.layer == "conv" and filters.images.shape == (2, 3, 3, 3)
    assert np.array_equal(filters.images[0][..., 0], CROSS.numpy())  # -1 corners -> 0, +1 cross -> 1
    assert np.array_equal(filters.images[1][..., 0], np.ones((3, 3)))  # red 1
    assert np.array_equal(filters.images[1][..., 1], np.zeros((3, 3)))  # green 0
    numbers = filters.to_dict()
    assert numbers["shape"] == [2, 3, 3, 3] and numbers["colour_share"] == pytest.approx([1 / 3, 1.0])


def test_deeper_layers_are_not_images() -> None:
    with pytest.raises(InputError, match="not images.*probe patches.*probe visualize"):
        first_layer_filters(tiny_loaded(), "features.0")
    with pytest.raises(InputError, match="not a Conv2d"):
        first_layer_filters(tiny_loaded(), "bn1")
    with pytest.raises(CnnlensError, match="nope"):
        first_layer_filters(tiny_loaded(), "nope")


def test_strongest_activations_rank_channels_by_mean() -> None:
    model = CrossDetector().eval()
    x = noise(1, 16)
    x[0, 0] += 1.0  # red: unit 1 (sum of red) is far above unit 0 (cross minus corners)
    (found,) = strongest_activations(model, x, ["conv"], top=2)
    assert found.channels == [1, 0] and found.shape == (2, 16, 16)
    with torch.no_grad():
        expect = float(torch.relu(model.conv(x))[0, 1].mean())
    assert found.means[0] == pytest.approx(expect, rel=1e-5)
    assert found.maps.shape == (2, 16, 16)
    assert hook_counts(model) == 0
    with pytest.raises(InputError, match="one image"):
        strongest_activations(model, noise(2, 16), ["conv"])
    with pytest.raises(InputError, match="top must be"):
        strongest_activations(model, x, ["conv"], top=0)
