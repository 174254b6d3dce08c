"""Top dataset patches: one streaming pass with a running top-k finds a planted cross detector's
crosses, at the right place, with its receptive field as the patch."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from cnnlens.errors import CnnlensError, InputError
from cnnlens.models.hooks import hook_counts
from cnnlens.probing.stream import RunningTopK, batches_of
from cnnlens.probing.top_patches import crop_patches, top_activations
from tests.probing.toys import CROSS, CrossDetector, noise, stamp

CROSSES = {3: (5, 7), 11: (12, 18), 20: (20, 3), 33: (9, 9)}  # image -> (row, col) of the cross


def planted(count: int = 40) -> torch.Tensor:
    x = noise(count)
    for image, (r, c) in CROSSES.items():
        stamp(x, image, r, c, CROSS)
    for image in (1, 8, 25):  # distractors: filled squares (more ink, the wrong shape)
        stamp(x, image, 10, 10, torch.ones(3, 3))
    return x


def view(x: torch.Tensor) -> np.ndarray:
    return (x.permute(1, 2, 0).clamp(0, 1) * 255).round().byte().numpy()


def test_the_cross_unit_finds_the_crosses_at_their_place() -> None:
    model, x = CrossDetector().eval(), planted()
    found = top_activations(model, batches_of(x, batch_size=8), "conv", k=4)
    assert found.units == [0, 1] and found.map_size == (24, 24) and found.images_seen == 40
    winners = found.winners([0])
    assert {w.image for w in winners} == set(CROSSES)
    for w in winners:
        assert (w.row, w.col) == CROSSES[w.image]
        assert 15 - 1.2 <= w.value <= 15  # 3 colours x 5 cross pixels of 1, less the noise at 4 corners
    units = crop_patches(
        model, found, [0], lambda order: batches_of(x, batch_size=3, order=order), view, mass=1.0
    )
    (unit,) = units
    assert [p.image for p in unit.patches] == [w.image for w in winners]
    for p, crop in zip(unit.patches, unit.crops):
        r, c = CROSSES[p.image]
        assert p.field == p.box == (c - 1, r - 1, c + 2, r + 2)  # the 3x3 receptive field of the unit
        assert crop.shape == (3, 3, 3)
        assert (crop[..., 0] >= 250).sum() == 5 and crop[1, 1, 0] >= 250  # the cross itself
    assert hook_counts(model) == 0 and not model.training


def test_top_k_is_the_same_whatever_the_batching() -> None:
    model, x = CrossDetector().eval(), planted()
    a = top_activations(model, batches_of(x, batch_size=40), "conv", k=6)
    b = top_activations(model, batches_of(x, batch_size=3), "conv", k=6)
    assert torch.equal(a.top.images, b.top.images) and torch.equal(a.top.positions, b.top.positions)
    assert torch.allclose(a.top.values, b.top.values)


def test_running_top_k_equals_sorting_everything() -> None:
    g = torch.Generator().manual_seed(1)
    values = torch.randn(500, 7, generator=g)
    top = RunningTopK(7, 5)
    for part in torch.arange(500).split(37):
        top.update(values[part], part, part.expand(7, -1).T * 10)
    expect = torch.topk(values.T, 5, dim=1)
    assert torch.equal(top.values, expect.values)
    assert torch.equal(top.images, expect.indices)
    assert torch.equal(top.positions, expect.indices * 10)


def test_memory_of_the_pass_does_not_grow_with_the_images() -> None:
    model = CrossDetector().eval()
    small = top_activations(model, batches_of(noise(20, 16), batch_size=10), "conv", k=3)
    large = top_activations(model, batches_of(noise(400, 16, seed=1), batch_size=10), "conv", k=3)
    assert large.images_seen == 20 * small.images_seen
    assert large.top.nbytes == small.top.nbytes == 3 * 2 * 3 * 8 - 2 * 3 * 4  # float32 values, int64 the rest


def test_fewer_images_than_k_keeps_only_those_seen() -> None:
    found = top_activations(CrossDetector().eval(), batches_of(noise(2, 16)), "conv", k=5)
    assert len(found.top.rows(0)) == 2


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"layer": "nope"}, "nope"),
        ({"layer": "conv", "units": [0, 2]}, "units [2] are not in layer 'conv'"),
        ({"layer": "conv", "units": []}, "at least one channel"),
        ({"layer": "conv", "k": 0}, "k must be"),
        ({"layer": "fc"}, "not a (N, C, h, w) feature map"),
    ],
)
def test_bad_inputs_are_one_line_errors(kwargs: dict, message: str) -> None:
    with pytest.raises(CnnlensError) as err:
        top_activations(CrossDetector().eval(), batches_of(noise(4, 16)), **kwargs)
    assert message in str(err.value) and "\n" not in str(err.value)


def test_no_images_is_an_error() -> None:
    with pytest.raises(InputError, match="no image"):
        top_activations(CrossDetector().eval(), iter([]), "conv")
