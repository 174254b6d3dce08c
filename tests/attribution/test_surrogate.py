"""LIME and KernelSHAP against models whose answers are known in closed form."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from cnnlens.attribution import create
from cnnlens.attribution.surrogate import coalitions, fill_image, superpixels
from tests.attribution.toys import CellLinear
from tests.conftest import tiny_loaded

ONES = torch.ones(1, 3, 32, 32)


def cell_model(cells_per_side: int, seed: int = 0) -> tuple[CellLinear, torch.Tensor]:
    weight = torch.randn(2, cells_per_side**2, generator=torch.Generator().manual_seed(seed))
    return CellLinear(weight, 32 // cells_per_side).eval(), weight


@pytest.mark.parametrize(("cells", "n_samples"), [(2, 64), (4, 300)])  # enumerated, then sampled in pairs
def test_kernelshap_exact_on_an_additive_model(cells: int, n_samples: int) -> None:
    model, weight = cell_model(cells)
    method = create(
        "kernelshap",
        model,
        segmentation="grid",
        n_segments=cells**2,
        fill="zero",
        score="logit",
        n_samples=n_samples,
    )
    exp = method.explain(ONES, target=0)
    values = exp.extras["values"][0]
    assert torch.allclose(values, weight[0], atol=1e-4)
    assert exp.extras["fx"][0] - exp.extras["f_baseline"][0] == pytest.approx(
        float(weight[0].sum()), abs=1e-4
    )
    assert abs(exp.extras["sum_gap"][0]) < 1e-6
    segments = exp.extras["segments"][0]
    assert torch.allclose(exp.attributions[0], values[segments], atol=1e-6)


def test_kernelshap_values_sum_to_the_score_gap_on_a_cnn() -> None:
    x = torch.randn(1, 3, 32, 32, generator=torch.Generator().manual_seed(3))
    exp = create("kernelshap", tiny_loaded(), segmentation="grid", n_segments=16, n_samples=100).explain(x)
    gap = exp.extras["fx"][0] - exp.extras["f_baseline"][0]
    assert float(exp.extras["values"][0].double().sum()) == pytest.approx(gap, abs=1e-6)
    assert gap != 0


def test_paired_sampling_takes_complements() -> None:
    rows, weights = coalitions(10, 200, torch.Generator().manual_seed(0))
    half = len(rows) // 2
    assert torch.equal(rows[:half] + rows[half:], torch.ones(half, 10, dtype=torch.long))
    assert ((rows.sum(1) > 0) & (rows.sum(1) < 10)).all()
    assert np.all(weights == 1)


def test_lime_recovers_the_weights_of_a_model_linear_in_superpixels() -> None:
    model, weight = cell_model(4)
    params = {"segmentation": "grid", "n_segments": 16, "fill": "zero", "score": "logit", "n_samples": 300}
    exact = create("lime", model, alpha=1e-9, **params).explain(ONES, target=1)
    assert torch.allclose(exact.extras["weights"][0], weight[1], atol=1e-4)
    assert exact.extras["r2"][0] == pytest.approx(1.0, abs=1e-6)
    ridge = create("lime", model, top_k=3, **params).explain(ONES, target=1)  # LIME's default alpha=1
    got = ridge.extras["weights"][0]
    assert np.corrcoef(got.numpy(), weight[1].numpy())[0, 1] > 0.999
    top = set(torch.argsort(weight[1], descending=True)[:3].tolist())
    shown = set(ridge.extras["segments"][0][ridge.extras["top_mask"][0]].unique().tolist())
    assert shown == {j for j in top if weight[1, j] > 0}


@pytest.mark.parametrize("name", ["lime", "kernelshap"])
def test_seeded(name: str, images: torch.Tensor) -> None:
    model = tiny_loaded()
    a = create(name, model, n_samples=40, seed=1, segmentation="grid", n_segments=16).explain(images)
    b = create(name, model, n_samples=40, seed=1, segmentation="grid", n_segments=16).explain(images)
    c = create(name, model, n_samples=40, seed=2, segmentation="grid", n_segments=16).explain(images)
    assert torch.equal(a.attributions, b.attributions)
    assert not torch.equal(a.attributions, c.attributions)


@pytest.mark.parametrize("segmentation", ["slic", "quickshift", "grid"])
def test_superpixels_label_every_pixel(segmentation: str) -> None:
    from cnnlens.data import load_sample
    from cnnlens.data.transforms import Preprocessing

    image = Preprocessing(resize=64, crop=64)(load_sample("chelsea"))
    labels = superpixels(image, segmentation, 20)
    assert labels.shape == (64, 64)
    assert labels.min() == 0
    assert torch.equal(labels.unique(), torch.arange(int(labels.max()) + 1))
    assert int(labels.max()) + 1 >= 4


def test_fills() -> None:
    image = torch.randn(3, 8, 8)
    segments = torch.zeros(8, 8, dtype=torch.long)
    segments[:, 4:] = 1
    mean = fill_image(image, segments, "mean")
    assert torch.allclose(mean[:, 0, 0], image[:, :, :4].mean(dim=(1, 2)))
    assert torch.equal(fill_image(image, segments, "zero"), torch.zeros_like(image))
    assert fill_image(image, segments, "blur").std() < image.std()


def test_bad_parameters(tiny: object) -> None:
    with pytest.raises(ValueError, match="segmentation must be one of"):
        create("lime", tiny, segmentation="felzenszwalb")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="fill must be one of"):
        create("kernelshap", tiny, fill="grey")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="n_samples must be at least 2"):
        create("kernelshap", tiny, n_samples=1)  # type: ignore[arg-type]
