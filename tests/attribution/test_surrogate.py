"""LIME and KernelSHAP against models whose answers are known in closed form."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
import torch
from torch import nn

from cnnlens.attribution import create
from cnnlens.attribution.methods.surrogate import coalitions, fill_image, superpixels
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
    params["precision"] = "fp32"
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


class Unanimity(nn.Module):
    """Logit 0 = ``sum_g w_g prod_{j in g} z_j``, ``z_j`` the mean of channel 0 over grid cell ``j``.

    A sum of unanimity games: with an all-ones image, the ``"grid"`` segmentation of the same cell
    size and the ``"zero"`` fill, ``z`` is the 0/1 vector of shown cells, and the Shapley value of
    cell ``j`` is ``sum_{g containing j} w_g / |g|`` (each game's worth split evenly among its
    players). Games of different orders are what tell the Shapley kernel from other weightings.
    """

    def __init__(self, games: list[tuple[float, tuple[int, ...]]], cell: int) -> None:
        super().__init__()
        self.pool = nn.AvgPool2d(cell)
        self.games = games

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        z = self.pool(x[:, :1]).flatten(1)
        s = sum(w * z[:, list(g)].prod(1) for w, g in self.games)
        assert isinstance(s, torch.Tensor)
        return torch.stack([s, -s], dim=1)

    def shapley(self, d: int) -> torch.Tensor:
        phi = torch.zeros(d)
        for w, g in self.games:
            phi[list(g)] += w / len(g)
        return phi


GRID = {"segmentation": "grid", "fill": "zero", "score": "logit", "precision": "fp32"}


def kernelshap_values(model: nn.Module, image: torch.Tensor, d: int, n_samples: int) -> torch.Tensor:
    exp = create("kernelshap", model, n_segments=d, n_samples=n_samples, **GRID).explain(image, target=0)
    assert int(exp.extras["segments"][0].max()) + 1 == d
    return exp.extras["values"][0]


def test_kernelshap_splits_a_product_evenly() -> None:
    """f = z1 * z2 over superpixels: each of the two gets half of the product, the others nothing."""
    model = Unanimity([(1.0, (1, 2))], cell=8)
    expected = torch.zeros(16)
    expected[[1, 2]] = 0.5
    sampled = kernelshap_values(model, ONES, 16, 1000)  # 2^16 coalitions: sampled in pairs
    assert torch.allclose(sampled, expected, atol=0.05)
    small = Unanimity([(1.0, (1, 2))], cell=16)
    exact = kernelshap_values(small, ONES, 4, 64)  # 14 coalitions: enumerated
    assert torch.allclose(exact, expected[:4], atol=1e-6)


def test_kernelshap_is_exact_on_games_of_several_orders() -> None:
    """Unanimity games of orders 1 to 4 on 8 cells: enumeration gives the Shapley values exactly.

    A constant weight, or a kernel without the binomial, fits these to other values (about 0.1 off).
    """
    games = [(1.0, (0, 1, 2, 3)), (1.0, (0, 4)), (-0.7, (5,)), (2.0, (1, 6, 7))]
    model = Unanimity(games, cell=8)
    image = torch.ones(1, 3, 16, 32)  # a 2 x 4 grid of 8-pixel cells
    values = kernelshap_values(model, image, 8, 300)  # 254 coalitions <= 300: enumerated
    assert torch.allclose(values, model.shapley(8), atol=1e-5)


def brute_force_shapley(value: dict[tuple[int, ...], float], d: int) -> np.ndarray:
    """``phi_j = sum_{S not containing j} |S|! (d - |S| - 1)! / d! (v(S + j) - v(S))``."""
    phi = np.zeros(d)
    for j in range(d):
        for code, v in value.items():
            if code[j]:
                continue
            s = sum(code)
            with_j = (*code[:j], 1, *code[j + 1 :])
            weight = math.factorial(s) * math.factorial(d - s - 1) / math.factorial(d)
            phi[j] += weight * (value[with_j] - v)
    return phi


def small_cnn() -> nn.Module:
    """A seeded non-linear CNN whose scores move by O(1) when superpixels are hidden."""
    torch.manual_seed(0)
    head = nn.Linear(3, 3)
    net = nn.Sequential(
        nn.Conv2d(3, 8, 5, padding=2),
        nn.ReLU(),
        nn.Conv2d(8, 8, 3, stride=2, padding=1),
        nn.ReLU(),
        nn.AdaptiveAvgPool2d(2),
        nn.Flatten(),
        nn.Linear(32, 3),
        nn.Tanh(),
        head,
    ).eval()
    with torch.no_grad():
        head.weight.mul_(10)  # probabilities far from uniform
    return net


def test_kernelshap_matches_brute_force_shapley_values_of_a_cnn() -> None:
    """Every one of the 2^9 coalitions scored by hand: the exact Shapley values of a non-linear CNN."""
    model = small_cnn()
    image = 3 * torch.randn(1, 3, 36, 36, generator=torch.Generator().manual_seed(5))
    params = {"segmentation": "grid", "n_segments": 9, "fill": "mean", "precision": "fp32"}
    exp = create("kernelshap", model, n_samples=600, **params).explain(image, target=2)
    segments = exp.extras["segments"][0]
    d = int(segments.max()) + 1
    assert d == 9  # a 3 x 3 grid; 510 coalitions <= 600: enumerated
    base = fill_image(image[0], segments, "mean")
    codes = list(itertools.product((0, 1), repeat=d))
    shown = torch.tensor(codes, dtype=torch.float32)[:, segments][:, None]  # (2^d, 1, H, W)
    with torch.no_grad():
        probs = model(base + (image[0] - base) * shown).softmax(1)[:, 2].double()
    expected = brute_force_shapley(dict(zip(codes, probs.tolist())), d)
    assert np.abs(expected).max() > 0.01  # not a trivial game
    assert np.allclose(exp.extras["values"][0].numpy(), expected, atol=2e-6)


def test_paired_sampling_draws_sizes_from_the_shapley_kernel() -> None:
    """Sampled coalition sizes follow ``p(s) ~ (d - 1) / (s (d - s))``, members uniform given the size."""
    d, n = 20, 200_000  # 2^20 coalitions: sampled
    rows, _ = coalitions(d, n, torch.Generator().manual_seed(0))
    sizes = rows[: n // 2].sum(1)
    freq = torch.bincount(sizes, minlength=d)[1:].double() / len(sizes)
    s = torch.arange(1, d, dtype=torch.float64)
    expected = 1 / (s * (d - s))
    assert torch.allclose(freq, expected / expected.sum(), atol=0.004)  # 5 standard errors
    for size in (1, d - 1):  # about 15000 rows each
        members = rows[: n // 2][sizes == size].double().mean(0)
        assert torch.allclose(members, torch.full((d,), size / d, dtype=torch.float64), atol=0.01)


def lime_population_fit(f: np.ndarray, z: np.ndarray, kernel_width: float) -> np.ndarray:
    """LIME's weighted least squares over every coalition, each as likely (uniform sampling)."""
    on = z.sum(1)
    cosine = np.sqrt(on / z.shape[1])  # cos(z, 1) of a 0/1 vector
    weights = np.sqrt(np.exp(-((1 - cosine) ** 2) / kernel_width**2))
    x = np.hstack([np.ones((len(z), 1)), z]) * np.sqrt(weights)[:, None]
    return np.linalg.lstsq(x, f * np.sqrt(weights), rcond=None)[0][1:]


def test_lime_weights_samples_by_the_exponential_cosine_kernel() -> None:
    """On a model with interactions the fit depends on the sample weights: LIME's kernel is checked.

    With 4 cells and many samples, LIME's ridge fit approaches the weighted least squares over all
    16 coalitions; the unweighted fit, or the kernel without its square root, is at least 0.1 away.
    """
    games = [(1.0, (0, 1)), (0.5, (2,)), (-1.0, (1, 2, 3))]
    model = Unanimity(games, cell=16)
    z = np.array(list(itertools.product((0, 1), repeat=4)), dtype=np.float64)
    f = sum(w * z[:, list(g)].prod(1) for w, g in games)
    expected = lime_population_fit(np.asarray(f), z, 0.25)
    unweighted = lime_population_fit(np.asarray(f), z, 1e6)
    assert np.abs(expected - unweighted).max() > 0.1
    exp = create("lime", model, n_segments=4, n_samples=8000, alpha=1e-9, batch_size=1000, **GRID)
    got = exp.explain(ONES, target=0).extras["weights"][0].numpy()
    assert np.abs(got - expected).max() < 0.04


def test_bad_parameters(tiny: object) -> None:
    with pytest.raises(ValueError, match="segmentation must be one of"):
        create("lime", tiny, segmentation="felzenszwalb")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="fill must be one of"):
        create("kernelshap", tiny, fill="grey")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="n_samples must be at least 2"):
        create("kernelshap", tiny, n_samples=1)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("name", "params", "message"),
    [
        ("lime", {"n_samples": 100.0}, r"n_samples must be an integer, got 100.0 \(float\); use 100"),
        ("kernelshap", {"n_samples": "100"}, r"n_samples must be an integer, got '100' \(str\)"),
        ("kernelshap", {"n_segments": 9.5}, r"n_segments must be an integer, got 9.5"),
        ("lime", {"kernel_width": "wide"}, r"kernel_width must be a number, got 'wide' \(str\)"),
        ("lime", {"top_k": 2.0}, r"top_k must be an integer"),
        ("kernelshap", {"seed": 1.5}, r"seed must be an integer"),
    ],
)
def test_bad_parameter_types_name_the_parameter(
    tiny: object, name: str, params: dict[str, object], message: str
) -> None:
    with pytest.raises(TypeError, match=message):
        create(name, tiny, **params)  # type: ignore[arg-type]


def test_cli_strings_still_work(tiny: object) -> None:
    from cnnlens.cli.common import parse_params

    method = create("lime", tiny, **parse_params(["n_samples=64", "kernel_width=1", "seed=3"]))  # type: ignore[arg-type]
    assert (method.n_samples, method.kernel_width, method.seed) == (64, 1.0, 3)  # type: ignore[attr-defined]
