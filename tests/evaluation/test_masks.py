"""The shipped sample-photo polygons and the mapping of masks into the model's input view."""

from __future__ import annotations

import numpy as np
import pytest

from cnnlens.data import SAMPLE_NAMES, load_sample
from cnnlens.data.masks import mask_to_input, polygon_mask, sample_mask, sample_mask_names
from cnnlens.data.transforms import Preprocessing
from cnnlens.errors import UnknownNameError


@pytest.mark.parametrize("name", SAMPLE_NAMES)
def test_every_sample_photo_has_a_mask_of_its_size(name: str) -> None:
    image = load_sample(name)
    mask = sample_mask(name)
    assert mask.shape == (image.height, image.width)
    assert 0.005 < mask.mean() < 0.95
    view = mask_to_input(mask, Preprocessing())
    assert view.shape == (224, 224)
    assert view.any()


def test_names_and_unknown() -> None:
    assert set(SAMPLE_NAMES) <= set(sample_mask_names())
    with pytest.raises(UnknownNameError, match="chelsea"):
        sample_mask("chelsee")


def test_polygon_closed_form() -> None:
    mask = polygon_mask([(2, 1), (5, 1), (5, 3), (2, 3)], (8, 6))
    expected = np.zeros((6, 8), bool)
    expected[1:4, 2:6] = True
    np.testing.assert_array_equal(mask, expected)
    with pytest.raises(ValueError, match="3 vertices"):
        polygon_mask([(0, 0), (1, 1)], (4, 4))


def test_mask_follows_the_crop() -> None:
    pre = Preprocessing(resize=100, crop=50)
    mask = np.zeros((100, 200), bool)  # short side 100 = resize: the crop is the central 50 x 50
    left, top, right, bottom = pre.crop_box((200, 100))
    assert (left, top, right, bottom) == (75, 25, 125, 75)
    mask[top : (top + bottom) // 2, left:right] = True  # upper half of the crop
    view = mask_to_input(mask, pre)
    assert view[:25].all()
    assert not view[25:].any()
    outside = np.zeros((100, 200), bool)
    outside[:, :75] = True
    assert not mask_to_input(outside, pre).any()
    with pytest.raises(ValueError, match="2-D"):
        mask_to_input(np.zeros((2, 3, 4), bool), pre)
