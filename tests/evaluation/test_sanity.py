"""Cascading model-parameter randomisation (Adebayo et al. 2018) on the tiny CNN."""

from __future__ import annotations

import pytest
import torch
from skimage.filters import sobel
from torch import nn

from cnnlens.attribution import create
from cnnlens.evaluation import Sample, create_metric
from cnnlens.evaluation.sanity import cascade_stages, rank_correlation
from tests.conftest import tiny_loaded


def saliency_of(module: nn.Module, x: torch.Tensor, target: int) -> torch.Tensor:
    return create("saliency", module).explain(x, target).attributions[0]


def edges_of(module: nn.Module, x: torch.Tensor, target: int) -> torch.Tensor:
    """An edge detector: a map of the image that ignores the model."""
    return torch.from_numpy(sobel(x[0].mean(0).numpy())).float()


def sample_for(seed: int, explain) -> Sample:  # type: ignore[no-untyped-def]
    model = tiny_loaded(seed).module
    x = torch.randn(1, 3, 32, 32, generator=torch.Generator().manual_seed(seed))
    target = int(model(x).argmax())
    return Sample(explain(model, x, target), x, model, target, explain=explain)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_edge_detector_fails_and_gradient_passes(seed: int) -> None:
    metric = create_metric("randomisation", stages=3)
    edges = metric(sample_for(seed, edges_of))
    assert edges.value == pytest.approx(1.0)
    assert not edges.extras["passed"]
    assert edges.extras["ssim"] == pytest.approx([1.0, 1.0, 1.0])
    assert edges.extras["ssim_mean"] == pytest.approx(1.0)
    gradient = metric(sample_for(seed, saliency_of))
    assert gradient.extras["passed"], gradient.curve
    assert gradient.value < 0.5
    assert gradient.extras["ssim_mean"] < 0.3, gradient.extras["ssim"]


def peak_over_fresh_noise(module: nn.Module, x: torch.Tensor, target: int) -> torch.Tensor:
    """The same bright square on faint noise drawn anew at each call: the ranks change, the picture not."""
    m = 0.01 * torch.rand(32, 32)
    m[10:16, 12:18] = 1.0
    return m


def test_a_map_whose_ranks_change_but_not_its_picture_fails_on_ssim() -> None:
    torch.manual_seed(0)
    result = create_metric("randomisation", stages=3)(sample_for(0, peak_over_fresh_noise))
    assert result.value < 0.5  # Spearman alone would pass it
    assert result.extras["ssim_mean"] > 0.9
    assert not result.extras["passed"]
    lenient = create_metric("randomisation", stages=3, ssim_threshold=0.99)
    assert lenient(sample_for(0, peak_over_fresh_noise)).extras["passed"]


def test_the_users_model_is_never_modified() -> None:
    sample = sample_for(0, saliency_of)
    model = sample.model
    before = {k: v.clone() for k, v in model.state_dict().items()}
    seen: list[nn.Module] = []

    def spy(module: nn.Module, x: torch.Tensor, target: int) -> torch.Tensor:
        seen.append(module)
        return saliency_of(module, x, target)

    sample.explain = spy
    create_metric("randomisation", stages=4)(sample)
    assert len(seen) == 4
    assert all(m is not model for m in seen)
    for k, v in model.state_dict().items():
        assert torch.equal(v, before[k]), k
    # the copy was changed: its classifier differs from the user's
    assert not torch.equal(seen[-1].fc.weight, model.fc.weight)


def test_cascade_goes_from_the_top_layer_down() -> None:
    stages = cascade_stages(tiny_loaded().module, 4)
    assert stages == [["fc"], ["features.0"], ["bn1"], ["conv1"]]
    assert cascade_stages(tiny_loaded().module, 2) == [["fc", "features.0"], ["bn1", "conv1"]]


def test_seeded() -> None:
    metric = create_metric("randomisation", seed=3)
    assert metric(sample_for(0, saliency_of)).curve == metric(sample_for(0, saliency_of)).curve


def test_rank_correlation_of_constant_maps() -> None:
    ones = torch.ones(4, 4)
    assert rank_correlation(ones, ones) == 1.0
    assert rank_correlation(ones, torch.rand(4, 4)) == 0.0
    a = torch.rand(4, 4)
    assert rank_correlation(a, 2 * a + 1) == pytest.approx(1.0)
    assert rank_correlation(a, -a) == pytest.approx(-1.0)
