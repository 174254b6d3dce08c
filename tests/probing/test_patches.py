"""What a channel responds to: the patch around its peak is the receptive field of a known detector."""

from __future__ import annotations

import pytest
import torch
from PIL import Image
from torch import nn

from cnnlens.models.hooks import hook_counts
from cnnlens.probing.channels import channel_shapley
from cnnlens.probing.figures import channels_figure
from cnnlens.probing.patches import channel_patches
from tests.attribution.test_contract import assert_same, snapshot


class SpotDetector(nn.Module):
    """Two 3x3 convs (the second with stride 2): channel 0 adds up red, channel 1 green.

    A unit of ``conv2`` sees a 5x5 input window: rows ``2i-2 .. 2i+2``, columns ``2j-2 .. 2j+2``.
    """

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 2, 3, padding=1, bias=False)
        self.act1 = nn.ReLU()
        self.conv2 = nn.Conv2d(2, 2, 3, stride=2, padding=1, bias=False)
        self.act2 = nn.ReLU()
        self.fc = nn.Linear(2, 2)
        with torch.no_grad():
            for conv in (self.conv1, self.conv2):
                conv.weight.zero_()
                conv.weight[0, 0] = 1.0
                conv.weight[1, 1] = 1.0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.act2(self.conv2(self.act1(self.conv1(x)))).mean(dim=(2, 3)))


def spots(*dots: tuple[int, int, int, float], size: int = 32) -> torch.Tensor:
    """A ``(1, 3, size, size)`` image of 0.1 (every unit active) with ``(channel, row, col, value)`` dots."""
    x = torch.full((1, 3, size, size), 0.1)
    for c, r, q, v in dots:
        x[0, c, r, q] = v
    return x


def test_patch_is_the_receptive_field_around_the_detected_spot() -> None:
    model = SpotDetector().eval()
    x = spots((0, 20, 10, 5.0), (1, 6, 24, 5.0))
    found = channel_patches(model, x, "conv2", [0, 1], mass=1.0)
    red, green = found[0][0], found[1][0]
    assert red.position == (10, 5)
    assert red.field == (8, 18, 13, 23)  # columns 8..12, rows 18..22: contains the dot at (20, 10)
    assert red.box == red.field  # all of the gradient
    assert green.position == (3, 12)
    assert green.box == green.field == (22, 4, 27, 9)
    assert red.image == 0
    assert red.activation > 5
    core = channel_patches(model, x, "conv2", [0], mass=0.3)[0][0]  # the gradient is 1-2-3-2-1 per axis
    assert core.field == red.field
    assert core.box == (9, 19, 12, 22)  # the 3x3 core holds 49/81 of it, the centre pixel 9/81


def test_patch_is_clipped_at_the_border_and_a_dead_unit_gets_its_cell() -> None:
    model = SpotDetector().eval()
    corner = channel_patches(model, spots((0, 0, 0, 5.0)), "conv2", [0], mass=1.0)[0][0]
    assert corner.box == corner.field == (0, 0, 3, 3)
    dead = channel_patches(model, torch.zeros(1, 3, 32, 32), "conv2", [1])[1][0]
    r, q = dead.position
    assert dead.box == dead.field == (2 * q, 2 * r, 2 * q + 2, 2 * r + 2)  # no gradient: its 2x2 cell


def test_probe_patches_are_the_strongest_images_first() -> None:
    model = SpotDetector().eval()
    probes = torch.cat([spots(), spots((0, 20, 10, 9.0)), spots((0, 4, 28, 3.0)), spots((1, 8, 8, 9.0))])
    found = channel_patches(model, probes, "conv2", [0], per_channel=2, batch_size=1)[0]
    assert [p.image for p in found] == [1, 2]
    assert found[0].field == (8, 18, 13, 23)
    assert found[1].field == (26, 2, 31, 7)  # the dot at row 4, column 28
    left, top, right, bottom = found[1].box
    assert left <= 28 < right and top <= 4 < bottom
    assert found[0].activation > found[1].activation


def test_patches_leave_the_model_as_found_and_check_their_arguments() -> None:
    model = SpotDetector().train()
    before = snapshot(model)
    channel_patches(model, spots(), "conv2", [0, 1], per_channel=5)
    assert_same(before, snapshot(model))
    assert hook_counts(model) == 0
    with pytest.raises(ValueError, match=r"channels \[2\] are not in layer 'conv2', which has 2"):
        channel_patches(model, spots(), "conv2", [2])
    with pytest.raises(ValueError, match="per_channel must be a positive integer, got 0"):
        channel_patches(model, spots(), "conv2", [0], per_channel=0)
    with pytest.raises(ValueError, match="batch_size must be a positive integer, got 0"):
        channel_patches(model, spots(), "conv2", [0], batch_size=0)
    with pytest.raises(ValueError, match=r"share of the gradient in \(0, 1\]"):
        channel_patches(model, spots(), "conv2", [0], mass=0)
    with pytest.raises(ValueError, match=r"not a \(N, C, h, w\) feature map \(needed by channel patches\)"):
        channel_patches(model, spots(), "fc", [0])


def test_channels_figure_shows_a_row_per_channel_with_its_patches() -> None:
    model = SpotDetector().eval()
    x = spots((0, 20, 10, 5.0), (1, 6, 24, 5.0))
    result = channel_shapley(model, x, 0, layer="conv2")
    pos, neg = result.top(2)
    chosen = pos + neg
    probes = torch.cat([spots((0, 20, 10, 9.0)), spots((1, 8, 8, 9.0))])
    views = [Image.new("RGB", (32, 32)) for _ in range(2)]
    fig = channels_figure(
        result,
        Image.new("RGB", (32, 32)),
        k=2,
        patches=channel_patches(model, x, "conv2", chosen),
        probes=channel_patches(model, probes, "conv2", chosen, per_channel=2),
        probe_views=views,
        probe_names=["a", "b"],
    )
    shown = [ax for ax in fig.axes if ax.images]
    assert len(shown) == len(chosen) * 4  # activation map, patch here, two probe patches
    assert 1 < shown[1].images[0].get_array().shape[0] <= 5
    assert any(ax.patches for ax in fig.axes)  # the receptive field is outlined on the map
