"""Metrics on constructed cases with known answers, and their input checks."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torch import nn

from cnnlens.errors import UnknownNameError
from cnnlens.evaluation import (
    Column,
    Metric,
    MetricResult,
    Sample,
    column_names,
    create_metric,
    get_metric,
    metric_names,
    metric_of,
    metrics_markdown,
    register_metric,
)
from cnnlens.evaluation.complexity import gini
from cnnlens.evaluation.faithfulness import curve_auc, pixel_ranks
from cnnlens.evaluation.localisation import pointing_game

H = W = 16


def square_mask(top: int, left: int, size: int, shape: tuple[int, int] = (H, W)) -> torch.Tensor:
    mask = torch.zeros(shape, dtype=torch.bool)
    mask[top : top + size, left : left + size] = True
    return mask


class Additive(nn.Module):
    """f(x) = sum(w * x): every pixel's exact contribution is sum_c w_c x_c (baseline 0)."""

    def __init__(self, weight: torch.Tensor) -> None:
        super().__init__()
        self.weight = nn.Parameter(weight)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (x * self.weight).sum(dim=(1, 2, 3))[:, None]


# -- localisation --------------------------------------------------------------------------------


def test_map_equal_to_mask_scores_one() -> None:
    mask = square_mask(2, 3, 5)
    sample = Sample(attribution=mask.float(), mask=mask)
    assert create_metric("pointing_game")(sample).value == 1.0
    assert create_metric("energy_pointing")(sample).value == 1.0


def test_map_outside_the_mask_misses() -> None:
    mask = square_mask(0, 0, 3)
    far = torch.zeros(H, W)
    far[15, 15] = 1.0  # 12 px from the mask in both axes: ~17 px away
    outside = Sample(attribution=far, mask=mask)
    assert create_metric("pointing_game")(outside).value == 0.0
    assert create_metric("energy_pointing")(outside).value == 0.0
    near = torch.zeros(H, W)
    near[2, 10] = 1.0  # 8 px right of the mask's edge
    assert create_metric("pointing_game", tolerance=15)(Sample(near, mask=mask)).value == 1.0
    assert create_metric("pointing_game", tolerance=5)(Sample(near, mask=mask)).value == 0.0


def test_energy_is_the_positive_share_in_the_mask() -> None:
    mask = square_mask(0, 0, 4)
    a = torch.zeros(H, W)
    a[1, 1], a[10, 10], a[12, 12] = 3.0, 1.0, -5.0  # negatives are ignored
    assert create_metric("energy_pointing")(Sample(a, mask=mask)).value == pytest.approx(0.75)


def test_tied_maxima_count_as_a_share_not_a_free_hit() -> None:
    mask = square_mask(0, 0, 16)[:, :8]
    mask = torch.cat([mask, torch.zeros(16, 8, dtype=torch.bool)], dim=1)
    assert pointing_game(torch.ones(H, W), mask, tolerance=0) == pytest.approx(0.5)


def test_topk_iou_closed_form() -> None:
    a = -torch.arange(100, dtype=torch.float32).view(10, 10)  # top 20% = rows 0 and 1
    mask = torch.zeros(10, 10, dtype=torch.bool)
    mask[:4, :5] = True  # 20 pixels, 10 of them in rows 0-1
    value = create_metric("topk_iou", fraction=0.2)(Sample(a, mask=mask)).value
    assert value == pytest.approx(10 / 30)


# -- faithfulness --------------------------------------------------------------------------------


def additive_case(seed: int = 0) -> tuple[Additive, torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    model = Additive(torch.randn(1, 3, 8, 8, generator=g))
    x = torch.randn(1, 3, 8, 8, generator=g)
    exact = (model.weight * x).sum(dim=1)[0].detach()
    return model, x, exact


def test_deletion_curve_of_the_exact_attribution_is_the_closed_form() -> None:
    model, x, exact = additive_case()
    metric = create_metric("deletion", steps=16, baseline="black", score="logit")
    result = metric(Sample(exact, x, model))
    contributions = np.sort(exact.flatten().numpy())[::-1]
    total = contributions.sum()
    expected = [total - contributions[: round(k / 16 * 64)].sum() for k in range(17)]
    np.testing.assert_allclose(result.curve[1], expected, rtol=1e-5, atol=1e-4)
    assert result.value == pytest.approx(curve_auc(result.curve[0], expected), abs=1e-4)


def test_exact_attribution_gives_the_steepest_deletion_and_insertion() -> None:
    model, x, exact = additive_case(1)
    deletion = create_metric("deletion", steps=16, baseline="black", score="logit")
    insertion = create_metric("insertion", steps=16, baseline="black", score="logit")
    best_del = deletion(Sample(exact, x, model))
    best_ins = insertion(Sample(exact, x, model))
    g = torch.Generator().manual_seed(2)
    others = [-exact, exact.abs(), *(torch.randn(8, 8, generator=g) for _ in range(10))]
    for other in others:
        worse_del = deletion(Sample(other, x, model))
        worse_ins = insertion(Sample(other, x, model))
        assert np.all(np.array(best_del.curve[1]) <= np.array(worse_del.curve[1]) + 1e-4)
        assert np.all(np.array(best_ins.curve[1]) >= np.array(worse_ins.curve[1]) - 1e-4)
        assert best_del.value < worse_del.value
        assert best_ins.value > worse_ins.value


def test_topk_drop_is_the_lost_share_of_the_probability() -> None:
    class TwoClass(nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            s = x[:, 0, :2, :].sum(dim=(1, 2))  # only the top two rows matter
            return torch.stack([s, torch.zeros_like(s)], dim=1)

    x = torch.ones(1, 3, 10, 10)
    a = -torch.arange(100, dtype=torch.float32).view(10, 10)  # top 20% = the top two rows
    result = create_metric("topk_drop", fraction=0.2)(Sample(a, x, TwoClass()))
    p_full = torch.tensor([20.0, 0.0]).softmax(0)[0].item()
    assert result.value == pytest.approx((p_full - 0.5) / p_full, rel=1e-5)


def test_hand_computed_auc() -> None:
    assert curve_auc([0, 0.5, 1], [1, 0.5, 0]) == pytest.approx(0.5)
    assert curve_auc([0, 0.5, 1], [1, 0.2, 0.1]) == pytest.approx(0.375)
    assert curve_auc([0, 0.25, 1], [0, 1, 1]) == pytest.approx(0.125 + 0.75)


def test_pixel_ranks_order_by_decreasing_value() -> None:
    ranks = pixel_ranks(torch.tensor([[0.1, 0.9], [0.5, 0.5]]))
    assert ranks.tolist() == [[3, 0], [1, 2]]


def test_perturbation_restores_the_model_mode() -> None:
    model, x, exact = additive_case()
    model.train()
    create_metric("deletion", steps=4)(Sample(exact, x, model))
    assert model.training


# -- complexity and robustness -------------------------------------------------------------------


def test_gini_on_known_vectors() -> None:
    assert gini(np.array([0.0, 0.0, 0.0, 1.0])) == pytest.approx(0.75)
    assert gini(np.array([2.0, 2.0, 2.0])) == pytest.approx(0.0)
    assert gini(np.array([1.0, 2.0, 3.0, 4.0])) == pytest.approx(0.25)
    v = np.random.default_rng(0).random(50)
    mean_abs_diff = np.abs(v[:, None] - v[None]).sum() / (2 * v.size**2 * v.mean())
    assert gini(v) == pytest.approx(mean_abs_diff)
    assert math.isnan(create_metric("sparseness")(Sample(torch.zeros(4, 4))).value)


def test_max_sensitivity_is_zero_for_a_constant_map() -> None:
    x = torch.randn(1, 3, 8, 8)
    constant = torch.full((8, 8), 0.3)
    sample = Sample(constant, x, nn.Identity(), explain=lambda m, xx, t: constant)
    assert create_metric("max_sensitivity")(sample).value == 0.0


def test_max_sensitivity_of_an_input_copy_is_bounded_by_the_noise() -> None:
    x = torch.randn(1, 3, 8, 8, generator=torch.Generator().manual_seed(0))
    sample = Sample(x[0, 0], x, nn.Identity(), explain=lambda m, xx, t: xx[0, 0])
    metric = create_metric("max_sensitivity", n_samples=3, radius=0.05, seed=1)
    value = metric(sample).value
    r = 0.05 * float(x.max() - x.min())
    assert 0 < value <= r * 8 / float(x[0, 0].norm())
    assert metric(sample).value == value  # seeded


@pytest.mark.parametrize("name", ["randomisation", "max_sensitivity"])
def test_a_recomputed_map_of_another_size_is_an_error(name: str) -> None:
    x = torch.randn(1, 3, 8, 8)
    sample = Sample(torch.rand(8, 8), x, nn.Conv2d(3, 1, 1), explain=lambda m, xx, t: torch.rand(4, 4))
    with pytest.raises(ValueError, match=r"explain returned shape \(4, 4\), expected \(8, 8\)"):
        create_metric(name)(sample)


# -- registry and bad inputs ---------------------------------------------------------------------


def test_every_metric_declares_direction_and_category() -> None:
    assert {
        "deletion",
        "insertion",
        "topk_drop",
        "pointing_game",
        "energy_pointing",
        "topk_iou",
        "randomisation",
        "max_sensitivity",
        "sparseness",
    } <= set(metric_names())
    for name in metric_names():
        cls = get_metric(name)
        assert isinstance(cls.higher_is_better, bool)
        assert f"`{name}`" in metrics_markdown()


def full_sample(attribution: torch.Tensor) -> Sample:
    model, x, _ = additive_case()
    return Sample(
        attribution, x, model, 0, square_mask(0, 0, 4, (8, 8)), explain=lambda m, xx, t: attribution
    )


@pytest.mark.parametrize("name", metric_names())
def test_bad_maps_raise(name: str) -> None:
    metric = create_metric(name)
    bad_value = torch.zeros(8, 8)
    bad_value[0, 0] = float("nan")
    with pytest.raises(ValueError, match="NaN"):
        metric(full_sample(bad_value))
    with pytest.raises(ValueError, match="one \\(H, W\\) map"):
        metric(full_sample(torch.rand(2, 8, 8)))


@pytest.mark.parametrize("name", ["pointing_game", "energy_pointing", "topk_iou"])
def test_bad_masks_raise(name: str) -> None:
    metric = create_metric(name)
    a = torch.rand(8, 8)
    with pytest.raises(ValueError, match="does not match"):
        metric(Sample(a, mask=torch.ones(4, 4, dtype=torch.bool)))
    with pytest.raises(ValueError, match="empty"):
        metric(Sample(a, mask=torch.zeros(8, 8, dtype=torch.bool)))
    with pytest.raises(ValueError, match=r"needs Sample\.mask"):
        metric(Sample(a))


@pytest.mark.parametrize("name", ["deletion", "insertion", "topk_drop", "randomisation", "max_sensitivity"])
def test_model_metrics_check_their_inputs(name: str) -> None:
    metric = create_metric(name)
    sample = full_sample(torch.rand(8, 8))
    sample.inputs = torch.rand(1, 3, 6, 6)
    with pytest.raises(ValueError, match="same spatial size"):
        metric(sample)
    sample.model = None
    with pytest.raises(ValueError, match=r"needs Sample\.model"):
        metric(sample)


@pytest.mark.parametrize(
    ("name", "params"),
    [
        ("deletion", {"steps": 0}),
        ("deletion", {"baseline": "white"}),
        ("insertion", {"score": "logprob"}),
        ("topk_drop", {"fraction": 1.5}),
        ("topk_iou", {"fraction": 0}),
        ("pointing_game", {"tolerance": -1}),
        ("randomisation", {"stages": 0}),
        ("randomisation", {"ssim_threshold": 1.5}),
        ("max_sensitivity", {"radius": 0}),
    ],
)
def test_bad_parameters_raise(name: str, params: dict[str, object]) -> None:
    with pytest.raises(ValueError, match=next(iter(params))):
        create_metric(name, **params)


def test_unknown_metric_and_parameter() -> None:
    with pytest.raises(UnknownNameError, match="deletion"):
        create_metric("deleton")
    with pytest.raises(TypeError, match="its parameters are"):
        create_metric("deletion", window=3)


def test_further_columns_are_registered_documented_and_cannot_clash() -> None:
    assert "randomisation_ssim" in column_names()
    assert metric_of("randomisation_ssim") == "randomisation"
    assert metric_of("deletion") == "deletion"
    assert "| `randomisation_ssim` | sanity | lower |" in metrics_markdown()

    class Clash(Metric):
        name = "clash"
        category = "sanity"
        higher_is_better = False
        summary = "test"
        reference = "none"
        columns = (Column("deletion", higher_is_better=False, summary="x", extra="x"),)

        def _evaluate(self, sample: Sample) -> MetricResult:
            return MetricResult(0.0)

    with pytest.raises(ValueError, match="column name 'deletion'"):
        register_metric(Clash)
    Clash.name, Clash.columns = "randomisation_ssim", ()
    with pytest.raises(ValueError, match="another metric's column"):
        register_metric(Clash)
    assert "clash" not in metric_names() and "randomisation_ssim" not in metric_names()


@pytest.mark.parametrize("baseline", ["blur", "mean", "black"])
def test_deletion_and_insertion_curves_follow_their_baseline(baseline: str) -> None:
    """On an additive model each point of the curve is the closed form with that baseline image."""
    from cnnlens.evaluation.faithfulness import baseline_image

    model, x, exact = additive_case()
    base = baseline_image(x, baseline, blur_sigma=1.0)
    if baseline == "mean":
        assert torch.allclose(base, x.mean(dim=(2, 3), keepdim=True).expand_as(x))
    if baseline == "blur":  # a blur keeps the channel means up to the border, but not the pixels
        assert not torch.allclose(base, x) and torch.allclose(base.mean(), x.mean(), atol=0.2)
    order = torch.argsort(exact.flatten(), descending=True)
    per_pixel_x = (model.weight * x).sum(dim=1)[0].detach().flatten()
    per_pixel_b = (model.weight * base).sum(dim=1)[0].detach().flatten()
    for mode in ("deletion", "insertion"):
        metric = create_metric(mode, steps=8, baseline=baseline, score="logit", blur_sigma=1.0)
        result = metric(Sample(exact, x, model))
        expected = []
        for k in range(9):
            top = order[: round(k / 8 * 64)]
            changed = torch.zeros(64, dtype=torch.bool)
            changed[top] = True
            kept, swapped = (per_pixel_x, per_pixel_b) if mode == "deletion" else (per_pixel_b, per_pixel_x)
            expected.append(float(torch.where(changed, swapped, kept).sum()))
        np.testing.assert_allclose(result.curve[1], expected, rtol=1e-5, atol=1e-4)
