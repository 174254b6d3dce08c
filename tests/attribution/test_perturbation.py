"""RISE, double occlusion, Score-CAM and Ablation-CAM on toy models with known answers."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from cnnlens.attribution import create
from cnnlens.attribution.hooks import capture_outputs
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
    occ = create("occlusion", model, window=8, stride=8).explain(x, target=0).attributions[0]
    assert torch.allclose(single, occ, atol=1e-5)


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
    # Score-CAM's softmax over probabilities is flat (a known property of the paper's weights)
    for name, ratio in (("scorecam", 1.4), ("ablationcam", 1e3)):
        sal = create(name, model, layer="features").explain(left_right_image(), target=0).attributions[0]
        assert sal[:, :8].mean() > ratio * sal[:, 8:].mean(), name


def test_ablationcam_closed_form_on_gap_linear(images: torch.Tensor) -> None:
    """On GAP + linear, ablating channel k lowers the logit by w_k mean(A_k): the weights are known."""
    model = tiny_loaded()
    exp = create("ablationcam", model, batch_size=4).explain(images)
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
    with pytest.raises(ValueError, match="precision must be one of"):
        create("rise", tiny, precision="fp16")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="batch_size must be a positive integer or 'auto'"):
        create("rise", tiny, batch_size="big")  # type: ignore[arg-type]
