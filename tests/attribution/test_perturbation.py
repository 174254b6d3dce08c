"""RISE, double occlusion, Score-CAM and Ablation-CAM on toy models with known answers."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from cnnlens.attribution import create
from cnnlens.attribution.engine.runner import PassRunner
from cnnlens.models import LoadedModel
from cnnlens.models.hooks import capture_outputs
from tests.attribution.test_closed_forms import PatchAdditive
from tests.attribution.toys import LeftRightCAM, ReadsOneRegion, left_right_image
from tests.conftest import tiny_loaded


def test_rise_concentrates_on_the_only_region_the_model_reads() -> None:
    model = ReadsOneRegion(top=16, left=0, size=16).eval()
    exp = create("rise", model, n_masks=400, cells=4).explain(torch.ones(1, 3, 32, 32), target=0)
    sal = exp.attributions[0]
    inside = sal[20:28, 4:12].mean()
    outside = torch.cat([sal[:8].flatten(), sal[:, 24:].flatten()]).mean()
    assert inside > outside * 1.3
    y, x = divmod(int(sal.argmax()), 32)
    assert y >= 12
    assert x < 20


def test_rise_masks_keep_p1_on_average_and_seed_decides() -> None:
    method = create("rise", ReadsOneRegion(0, 0, 8), n_masks=2000, cells=5, p1=0.3)
    draws = method.draws((30, 30), torch.Generator().manual_seed(0))  # type: ignore[attr-defined]
    masks = method.masks(*draws, (30, 30))  # type: ignore[attr-defined]
    assert masks.shape == (2000, 1, 30, 30)
    assert masks.min() >= 0
    assert masks.max() <= 1 + 1e-6
    assert float(masks.mean()) == pytest.approx(0.3, abs=0.02)
    x = torch.randn(1, 3, 32, 32)
    model = tiny_loaded()
    a = create("rise", model, n_masks=32, seed=4).explain(x)
    b = create("rise", model, n_masks=32, seed=4, batch_size=5).explain(x)  # same masks, other chunks
    c = create("rise", model, n_masks=32, seed=5).explain(x)
    assert torch.allclose(a.attributions, b.attributions, atol=1e-6)
    assert not torch.allclose(a.attributions, c.attributions)


def linear_model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Flatten(), nn.Linear(3 * 32 * 32, 2)).eval()


def test_double_occlusion_is_additive_on_a_linear_model() -> None:
    model = linear_model()
    x = torch.randn(1, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    params = {"window": 8, "stride": 8, "fixed_window": 16}
    exp = create("double_occlusion", model, fixed=(0, 0), **params).explain(x, target=0)
    inter, single = exp.extras["interaction"][0], exp.extras["single"][0]
    assert exp.extras["fixed"][0].tolist() == [0, 0, 16, 16]
    assert torch.allclose(inter[16:], torch.zeros_like(inter[16:]), atol=1e-4)  # disjoint windows add
    assert torch.allclose(inter[:, 16:], torch.zeros_like(inter[:, 16:]), atol=1e-4)
    assert torch.allclose(inter[:16, :16], single[:16, :16], atol=1e-4)  # b inside a: nothing more to hide
    fixed_drop = float(exp.extras["fixed_drop"][0])
    assert torch.allclose(exp.attributions[0, 16:], single[16:] + fixed_drop, atol=1e-4)
    occ = create("occlusion", model, window=8, stride=8, precision="fp32").explain(x, target=0)
    assert torch.allclose(single, occ.attributions[0], atol=1e-5)


def test_double_occlusion_fixes_the_window_where_single_occlusion_drops_most() -> None:
    model = linear_model()
    x = torch.zeros(1, 3, 32, 32)
    x[0, :, 16:, 8:24] = 1.0
    with torch.no_grad():
        model[1].weight[0] = 0.0
        model[1].weight[0].view(3, 32, 32)[:, 16:, 8:24] = 1.0
    exp = create("double_occlusion", model, window=8, stride=8, fixed_window=16).explain(x, target=0)
    assert exp.extras["fixed"][0].tolist() == [16, 8, 16, 16]


def test_scorecam_and_ablationcam_favour_the_channel_the_head_reads() -> None:
    model = LeftRightCAM().eval()
    # Score-CAM: masked by channel 0, p = sigmoid(3) = 0.95; by channel 1, p = 0.5 (the head ignores it)
    for name, ratio in (("scorecam", 1.85), ("ablationcam", 1e3)):
        sal = create(name, model, layer="features").explain(left_right_image(), target=0).attributions[0]
        assert sal[:, :8].mean() > ratio * sal[:, 8:].mean(), name


def test_ablationcam_closed_form_on_gap_linear(images: torch.Tensor) -> None:
    """On GAP + linear, ablating channel k lowers the logit by w_k mean(A_k): the weights are known."""
    model = tiny_loaded()
    exp = create("ablationcam", model, batch_size=4, precision="fp32").explain(images)
    assert exp.extras["split"] is True
    with capture_outputs({"features": model.module.features}) as store, torch.no_grad():
        logits = model.module(images)
    acts = store["features"]
    w = model.module.fc.weight[exp.targets]
    y = logits.gather(1, exp.targets.view(-1, 1))
    weights = w * acts.mean(dim=(2, 3)) / y
    expected = torch.relu((weights[:, :, None, None] * acts).sum(1))
    expected = nn.functional.interpolate(expected[:, None], size=(32, 32), mode="bilinear")[:, 0]
    assert torch.allclose(exp.attributions, expected, atol=1e-5, rtol=1e-4)


def test_bad_parameters(tiny: object) -> None:
    with pytest.raises(ValueError, match="p1"):
        create("rise", tiny, p1=0.0)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="fixed must be None"):
        create("double_occlusion", tiny, fixed=(-1, 2))  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="score must be one of"):
        create("scorecam", tiny, score="prob")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="weights must be one of score, softmax"):
        create("scorecam", tiny, weights="sum")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="precision must be one of"):
        create("rise", tiny, precision="fp16")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="batch_size must be a positive integer or 'auto'"):
        create("rise", tiny, batch_size="big")  # type: ignore[arg-type]


class ScaledGap(nn.Module):
    """``features`` (a 1x1 conv: ``A_k = s_k x_k + b_k``) -> global average pool -> linear ``W``."""

    def __init__(self) -> None:
        super().__init__()
        self.features = nn.Conv2d(3, 3, 1)
        self.fc = nn.Linear(3, 2)
        with torch.no_grad():
            self.features.weight.copy_(torch.diag(torch.tensor([2.0, -1.0, 0.5])).view(3, 3, 1, 1))
            self.features.bias.copy_(torch.tensor([0.3, 0.0, -0.2]))  # type: ignore[union-attr]
            self.fc.weight.copy_(torch.tensor([[1.5, -2.0, 1.0], [-1.0, 0.5, 2.0]]))
            self.fc.bias.copy_(torch.tensor([0.1, -0.1]))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.features(x).mean(dim=(2, 3)))


def scorecam_by_hand(
    x: np.ndarray, target: int, *, softmax: bool = False, normalise: bool = True
) -> np.ndarray:
    """Score-CAM of :class:`ScaledGap` (Wang et al. 2020, Algorithm 1), in NumPy from its weights.

    The layer keeps the input size, so upsampling is the identity. Mask ``H_k`` = min-max normalised
    ``A_k``; ``S_k`` = softmax probability of the target for ``x * H_k`` (fill 0); weights ``S_k``
    as in the authors' code (``softmax=True``: ``softmax_k(S)``, the ``weights="softmax"`` option);
    map ``ReLU(sum_k w_k A_k)``.
    """
    s, b = np.array([2.0, -1.0, 0.5]), np.array([0.3, 0.0, -0.2])
    w, c = np.array([[1.5, -2.0, 1.0], [-1.0, 0.5, 2.0]]), np.array([0.1, -0.1])
    acts = s[:, None, None] * x + b[:, None, None]
    scores = []
    for a in acts:
        mask = (a - a.min()) / (a.max() - a.min()) if normalise else a
        logits = w @ (s * (x * mask).mean(axis=(1, 2)) + b) + c
        scores.append(np.exp(logits[target]) / np.exp(logits).sum())
    weights = np.exp(scores) / np.exp(scores).sum() if softmax else np.array(scores)
    return np.maximum(np.tensordot(weights, acts, axes=1), 0.0)


def test_scorecam_closed_form_on_a_scaled_gap_model() -> None:
    x = torch.randn(1, 3, 6, 6, generator=torch.Generator().manual_seed(0))
    exp = create("scorecam", ScaledGap().eval(), layer="features", precision="fp32").explain(x, target=1)
    got = exp.attributions[0].double().numpy()
    expected = scorecam_by_hand(x[0].double().numpy(), 1)
    assert expected.max() > 0.1
    assert np.allclose(got, expected, atol=1e-5)
    for variant in ({"softmax": True}, {"normalise": False}):  # the test tells these apart
        other = scorecam_by_hand(x[0].double().numpy(), 1, **variant)
        assert np.abs(other - expected).max() > 0.05, variant
    soft = create("scorecam", ScaledGap().eval(), layer="features", precision="fp32", weights="softmax")
    got = soft.explain(x, target=1).attributions[0].double().numpy()
    assert np.allclose(got, scorecam_by_hand(x[0].double().numpy(), 1, softmax=True), atol=1e-5)


class TwoClassCAM(LeftRightCAM):
    """:class:`LeftRightCAM` whose class 0 reads channel 0 and class 1 reads channel 1 (weight 3)."""

    def __init__(self) -> None:
        super().__init__()
        with torch.no_grad():
            self.fc.weight.copy_(torch.tensor([[3.0, 0.0], [0.0, 3.0]]))


@pytest.mark.parametrize(("weights", "gap"), [("score", 1.5), ("softmax", 0.635149)])
def test_scorecam_maps_of_two_classes_differ_in_closed_form(weights: str, gap: float) -> None:
    """Masking by channel 0 (left half) keeps pooled features (0.5, 0): logits (1.5, 0), so class 0
    has ``p = sigmoid(1.5)`` and class 1 ``sigmoid(-1.5)``; masking by channel 1 swaps them. The map
    of class 0 is ``p_hi`` on the left and ``p_lo`` on the right, class 1's the mirror image. The
    paper's weights give a left/right ratio of ``e^1.5``; a softmax across channels flattens it to
    ``e^(p_hi - p_lo)`` (about 1.9)."""
    hi, lo = torch.sigmoid(torch.tensor(1.5)).item(), torch.sigmoid(torch.tensor(-1.5)).item()
    if weights == "softmax":
        hi, lo = (torch.tensor([hi, lo]).softmax(0)).tolist()
    method = create("scorecam", TwoClassCAM().eval(), layer="features", weights=weights, precision="fp32")
    x = left_right_image()
    maps = method.explain(x.expand(2, -1, -1, -1), target=torch.tensor([0, 1])).attributions
    left, right = torch.zeros(16, 16), torch.zeros(16, 16)
    left[:, :8], right[:, 8:] = 1.0, 1.0
    assert torch.allclose(maps[0], hi * left + lo * right, atol=1e-5)
    assert torch.allclose(maps[1], lo * left + hi * right, atol=1e-5)
    ratio = (maps[0][:, :8].mean() / maps[0][:, 8:].mean()).log().item()
    assert ratio == pytest.approx(gap, abs=1e-4)  # sigmoid(1.5) - sigmoid(-1.5) = 0.635149


def test_occlusion_of_several_sizes_is_the_mean_of_the_per_size_maps() -> None:
    torch.manual_seed(0)
    model = PatchAdditive()
    x = torch.randn(1, 3, 32, 32)
    exp = create("occlusion", model, window=[8, 16], stride=None, precision="fp32").explain(x, target=0)
    assert exp.extras["scales"][0].tolist() == [[8, 4], [16, 8]]
    per_size = exp.extras["per_size"]
    assert per_size.shape == (1, 2, 32, 32)
    for i, (window, stride) in enumerate(exp.extras["scales"][0].tolist()):
        one = create("occlusion", model, window=window, stride=stride, precision="fp32").explain(x, target=0)
        assert torch.allclose(per_size[0, i], one.attributions[0], atol=1e-5)
    assert torch.allclose(exp.attributions, per_size.mean(1), atol=1e-6)
    # closed form of the 16-pixel windows at stride 16: each block holds its four patches' sum
    blocks = create("occlusion", model, window=(8, 16), stride=(8, 16), precision="fp32").explain(x, target=0)
    patch_sums = x.sum(1).unfold(1, 8, 8).unfold(2, 8, 8).sum((-1, -2))[0]
    contribution = model.fc.weight[0].detach().view(4, 4) * patch_sums
    block = contribution.view(2, 2, 2, 2).sum((1, 3))  # (block row, block col)
    expected = block.repeat_interleave(16, 0).repeat_interleave(16, 1)
    assert torch.allclose(blocks.extras["per_size"][0, 1], expected, atol=1e-4)
    single = contribution.repeat_interleave(8, 0).repeat_interleave(8, 1)
    assert torch.allclose(blocks.attributions[0], (single + expected) / 2, atol=1e-4)


@pytest.mark.parametrize(
    ("name", "params"),
    [
        ("occlusion", {"window": [8, 16], "stride": None}),
        ("double_occlusion", {"fixed": "sweep", "fixed_window": 16}),
    ],
)
def test_several_sizes_and_sweep_batch_equals_items(name: str, params: dict[str, object]) -> None:
    model = linear_model()
    x = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(2))
    method = create(name, model, precision="fp32", **params)  # type: ignore[arg-type]
    batch = method.explain(x, target=0, batch_size=7)
    for i in range(2):
        item, alone = batch[i], method.explain(x[i : i + 1], target=0)
        assert torch.allclose(item.attributions, alone.attributions, atol=1e-5)
        assert set(item.extras) == set(alone.extras)
        for key, value in alone.extras.items():
            assert torch.allclose(item.extras[key].float(), value.float(), atol=1e-5), key


def test_window_sizes_larger_than_the_image_are_left_out() -> None:
    """(16, 48) on a 32-pixel image slides 16 only (48 would hide everything: a constant map); when
    every size is too large, one window of a quarter of the side slides by an eighth."""
    torch.manual_seed(0)
    model = PatchAdditive()
    x = torch.randn(1, 3, 32, 32)
    exp = create("occlusion", model, window=(16, 48), precision="fp32").explain(x, target=0)
    assert exp.extras["scales"][0].tolist() == [[16, 8]]
    one = create("occlusion", model, window=16, precision="fp32").explain(x, target=0)
    assert torch.allclose(exp.attributions, one.attributions, atol=1e-6)
    small = create("occlusion", model, window=(64, 48), precision="fp32").explain(x, target=0)
    assert small.extras["scales"][0].tolist() == [[8, 4]]
    assert small.attributions.std() > 0  # not the constant map of a window hiding everything


def test_occlusion_with_one_size_is_unchanged() -> None:
    torch.manual_seed(0)
    model = PatchAdditive()
    x = torch.randn(1, 3, 32, 32)
    plain = create("occlusion", model, window=8, stride=8, precision="fp32").explain(x)
    listed = create("occlusion", model, window=[8], stride=8, precision="fp32").explain(x)
    assert plain.extras == {}
    assert torch.equal(plain.attributions, listed.attributions)
    half = create("occlusion", model, window=8, stride=None, precision="fp32").explain(x)
    quarter = create("occlusion", model, window=8, stride=4, precision="fp32").explain(x)
    assert torch.equal(half.attributions, quarter.attributions)


def linear_contribution(model: nn.Module, x: torch.Tensor, target: int) -> torch.Tensor:
    """``w . x`` per pixel of a bias-free linear view: hiding a set of pixels drops their sum."""
    return (model[1].weight[target].detach().view(3, 32, 32) * x[0]).sum(0)


def test_double_occlusion_sweeps_the_fixed_window_as_in_seed_002() -> None:
    model = linear_model()
    x = torch.randn(1, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    params = {"window": 8, "stride": 8, "fixed_window": 16, "precision": "fp32"}
    exp = create("double_occlusion", model, fixed="sweep", **params).explain(x, target=0)
    fixed = exp.extras["fixed"][0]
    assert fixed.shape == (9, 4)  # 16-pixel window at stride 8: 3 x 3 positions
    assert fixed[:, :2].tolist() == [[y, x] for y in (0, 8, 16) for x in (0, 8, 16)]
    per_fixed = exp.extras["per_fixed"][0]
    assert per_fixed.shape == (9, 32, 32)
    c = linear_contribution(model, x, 0)
    for p, (top, left, h, w) in enumerate(fixed.tolist()):
        a = torch.zeros(32, 32, dtype=torch.bool)
        a[top : top + h, left : left + w] = True
        # f(x) - f(x without a and b) = sum of w.x over the union of a and b, b the 8x8 block of each pixel
        union = torch.zeros(4, 4)
        for by in range(4):
            for bx in range(4):
                b = torch.zeros(32, 32, dtype=torch.bool)
                b[8 * by : 8 * by + 8, 8 * bx : 8 * bx + 8] = True
                union[by, bx] = c[a | b].sum()
        expected = union.repeat_interleave(8, 0).repeat_interleave(8, 1)
        assert torch.allclose(per_fixed[p], expected, atol=1e-4), (top, left)
        assert float(exp.extras["fixed_drop"][0, p]) == pytest.approx(float(c[a].sum()), abs=1e-4)
        one = create("double_occlusion", model, fixed=(top, left), **params).explain(x, target=0)
        assert torch.allclose(one.attributions[0], per_fixed[p], atol=1e-5)
    assert torch.allclose(exp.attributions[0], per_fixed.mean(0), atol=1e-6)
    single = exp.extras["single"][0]
    inter = single + exp.extras["fixed_drop"][0][:, None, None] - per_fixed
    assert torch.allclose(exp.extras["interaction"][0], inter.mean(0), atol=1e-5)


def test_double_occlusion_center_and_lists_from_the_cli() -> None:
    from cnnlens.cli.common import parse_params

    model = linear_model()
    x = torch.randn(1, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    center = create("double_occlusion", model, fixed="center", window=8, fixed_window=12).explain(x)
    assert center.extras["fixed"][0].tolist() == [10, 10, 12, 12]
    params = parse_params(["fixed=[4, 2]", "window=8", "fixed_window=16"])
    method = create("double_occlusion", model, **params)
    assert method.fixed == (4, 2)  # type: ignore[attr-defined]
    assert create("double_occlusion", model, **parse_params(["fixed=sweep"])).fixed == "sweep"  # type: ignore[attr-defined]
    occ = create("occlusion", model, **parse_params(["window=8", "stride=4"]))
    assert (occ.window, occ.stride) == (8, 4)  # type: ignore[attr-defined]
    several = create("occlusion", model, **parse_params(["window=16,32", "stride=None"]))
    assert several.scales() == [(16, 8), (32, 16)]  # type: ignore[attr-defined]


@pytest.mark.parametrize(
    ("name", "params", "error", "message"),
    [
        ("occlusion", {"window": 8.0}, TypeError, r"window must be an integer .*got 8.0 \(float\); use 8"),
        ("occlusion", {"stride": "4"}, TypeError, r"stride must be an integer .*got '4' \(str\)"),
        ("occlusion", {"window": [8, 16.5]}, TypeError, r"window\[1\] must be an integer, got 16.5"),
        ("occlusion", {"window": []}, ValueError, "window must list at least one size"),
        ("occlusion", {"window": [8, 0]}, ValueError, "window and stride must be positive"),
        ("occlusion", {"window": [8, 16], "stride": [4]}, ValueError, "one step per size"),
        ("occlusion", {"window": 8, "stride": [4, 8]}, ValueError, "one step per size"),
        ("occlusion", {"fill": "black"}, TypeError, r"fill must be a number, got 'black'"),
        ("double_occlusion", {"window": [8, 16]}, TypeError, "slides one window size"),
        ("double_occlusion", {"fixed_window": 16.0}, TypeError, r"fixed_window must be an integer"),
        ("double_occlusion", {"fixed": "corner"}, ValueError, "fixed must be None, 'center', 'sweep'"),
        ("double_occlusion", {"fixed": (1.5, 2)}, TypeError, r"fixed\[0\] \(top\) must be an integer"),
        ("rise", {"n_masks": 100.0}, TypeError, r"n_masks must be an integer, got 100.0 \(float\); use 100"),
        ("rise", {"cells": "7"}, TypeError, r"cells \(grid cells per side\) must be an integer, got '7'"),
        ("rise", {"p1": "half"}, TypeError, r"p1 must be a number, got 'half'"),
        ("rise", {"seed": 0.5}, TypeError, "seed must be an integer"),
        ("rise", {"cells": True}, TypeError, r"cells .* must be an integer, got True \(bool\)"),
        ("scorecam", {"fill": None}, TypeError, "fill must be a number, got None"),
    ],
)
def test_bad_parameter_types_name_the_parameter(
    tiny: object, name: str, params: dict[str, object], error: type[Exception], message: str
) -> None:
    with pytest.raises(error, match=message):
        create(name, tiny, **params)  # type: ignore[arg-type]


def test_scorecam_default_layer_is_the_last_narrow_one_at_the_cam_resolution() -> None:
    """EfficientNet-like: blocks at 7x7 with 192 then 320 channels, a 1280-channel head, pooling."""
    from cnnlens.attribution.methods.scorecam import narrow_cam_layer
    from cnnlens.models.layers import LayerInfo

    table = [
        LayerInfo("blocks.4", "Sequential", (112, 14, 14), 1),
        LayerInfo("blocks.5.0", "Block", (192, 7, 7), 1),
        LayerInfo("blocks.5", "Sequential", (192, 7, 7), 1),
        LayerInfo("blocks.6", "Sequential", (320, 7, 7), 1),
        LayerInfo("blocks", "Sequential", (320, 7, 7), 1),  # holds blocks.4 (14x14): passed over
        LayerInfo("bn2", "BatchNorm2d", (1280, 7, 7), 1),
        LayerInfo("pool", "AdaptiveAvgPool2d", (1280, 1, 1), 0),
        LayerInfo("late", "Conv2d", (8, 7, 7), 1),  # after the default layer: never chosen
    ]
    assert narrow_cam_layer(table, "bn2", 256) == "blocks.5"
    assert narrow_cam_layer(table, "bn2", 320) == "blocks.6"
    assert narrow_cam_layer(table, "bn2", 2048) == "bn2"  # few enough channels already
    assert narrow_cam_layer(table, "bn2", 100) == "bn2"  # none narrow enough at 7x7: the default
    model = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(), nn.Conv2d(4, 300, 1), nn.ReLU())
    head = nn.Sequential(model, nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(300, 2)).eval()
    exp = create("scorecam", head, max_channels=16).explain(torch.rand(1, 3, 8, 8), target=0)
    assert exp.layer == "0.1"  # the 4-channel ReLU, not the 300-channel default


def _correlation(a: torch.Tensor, b: torch.Tensor) -> float:
    return float(torch.corrcoef(torch.stack([a.flatten(), b.flatten()]).double())[0, 1])


@pytest.mark.slow
def test_scorecam_on_the_default_model_tells_two_classes_apart(lite0: LoadedModel) -> None:
    """Chelsea explained for "tiger cat" (282) and "window screen" (904): the issue measured a
    correlation of 0.98 for the old default (softmax across channels at ``bn2``); the paper's weights at
    the default layer (``blocks.6``, 320 channels) give maps that correlate clearly less (0.77
    measured; the softmax weights at the same layer gave 0.92, not re-run here to keep the suite short)."""
    from cnnlens.data.samples import load_sample

    x = lite0.prepare(load_sample("chelsea")).expand(2, -1, -1, -1)
    targets = torch.tensor([282, 904])
    paper = create("scorecam", lite0).explain(x, target=targets)
    assert paper.layer == "blocks.6"
    r_paper = _correlation(*paper.attributions)
    assert r_paper < 0.85, r_paper


def test_rise_runs_an_image_explained_for_several_classes_once(tiny: LoadedModel) -> None:
    """Equal inputs share their masked passes; each still gets its own target's map, equal to the
    map of that input explained alone."""
    x = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(3))
    inputs = torch.cat([x[:1], x[1:], x[:1], x[:1]])
    targets = [0, 1, 1, 2]
    method = create("rise", tiny, n_masks=16, batch_size=8, precision="fp32")
    calls: list[int] = []
    original = PassRunner._infer

    def counting(self: PassRunner, batch: torch.Tensor, *args, **kwargs):  # type: ignore[no-untyped-def]
        calls.append(len(batch))
        return original(self, batch, *args, **kwargs)

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(PassRunner, "_infer", counting)
        together = method.explain(inputs, targets).attributions
    assert sum(calls) == 4 + 2 * 16  # the targets' forward, then 16 masks for each distinct image
    for i, (image, target) in enumerate(zip(inputs, targets, strict=True)):
        alone = method.explain(image[None], target).attributions[0]
        torch.testing.assert_close(together[i], alone, rtol=1e-5, atol=1e-7)
    assert not torch.allclose(together[0], together[2])  # same image, other class: another map
