"""Channel Shapley values: efficiency, exactness, sampling against enumeration, settings, clean-up."""

from __future__ import annotations

import itertools
import math

import pytest
import torch

from cnnlens.attribution.engine.split import suffix_runner
from cnnlens.probing.channels import (
    CoalitionGame,
    channel_shapley,
    exact_shapley,
    marginals,
    mean_activation,
    permutation_chain,
)
from tests.attribution.layer_models import LinearAfter, Mixer, seeded
from tests.attribution.test_contract import assert_same, snapshot
from tests.conftest import FailOnCall, tiny_loaded

X = torch.randn(1, 3, 8, 8, generator=torch.Generator().manual_seed(3))


def test_efficiency_holds_for_every_number_of_permutations() -> None:
    model = seeded(Mixer)
    for samples in (2, 6):
        r = channel_shapley(model, X, 0, layer="conv", samples=samples)
        assert r.method == "permutation"
        assert r.permutations == samples
        assert float(r.values.sum()) == pytest.approx(r.full - r.empty, abs=1e-9)
    with torch.no_grad():
        full = float(model(X)[0, 0])
    assert r.full == pytest.approx(full, abs=1e-5)


def test_exact_enumeration_equals_the_average_over_all_permutations() -> None:
    model = seeded(Mixer)
    with torch.no_grad():
        model.conv = torch.nn.Conv2d(3, 5, 3, padding=1)  # 5 channels: 120 permutations
        model.mix = torch.nn.Conv2d(5, 6, 1)
    runner = suffix_runner(model.eval(), "conv", X)
    game = CoalitionGame(runner, torch.zeros_like(runner.activation), 1, 64)
    ends = game(torch.stack([torch.zeros(5), torch.ones(5)]))
    brute = torch.zeros(5, dtype=torch.float64)
    for order in itertools.permutations(range(5)):
        o = torch.tensor(order)
        brute += marginals(o, game(permutation_chain(o)), float(ends[0]), float(ends[1]))
    brute /= math.factorial(5)
    assert torch.allclose(exact_shapley(game, 5), brute, atol=1e-9)


def test_sampling_agrees_with_exact_enumeration_on_8_channels() -> None:
    model = seeded(Mixer)
    exact = channel_shapley(model, X, 2, layer="conv")
    assert exact.method == "exact"
    assert exact.evaluations == 2 + 2**8
    assert float(exact.stderr.abs().max()) == 0
    sampled = channel_shapley(model, X, 2, layer="conv", samples=400, seed=1)
    assert float(sampled.stderr.min()) > 0  # the channels interact: sampling has variance
    z = (sampled.values - exact.values).abs() / sampled.stderr
    assert float(z.max()) < 4.5
    assert float((sampled.values - exact.values).abs().max()) < 0.1 * float(exact.values.abs().max())


def test_additive_game_is_exact_with_any_permutation() -> None:
    model = seeded(LinearAfter)
    with torch.no_grad():
        a = model.act(model.conv(X))[0]
    base = torch.rand(4, generator=torch.Generator().manual_seed(0))
    r = channel_shapley(model, X, 1, layer="act", baseline=base, samples=4)
    expected = (model.weight_map(1, a.shape) * (a - base[:, None, None])).sum((1, 2))
    assert r.baseline == "tensor"
    assert torch.allclose(r.values, expected.double(), atol=1e-5)
    assert float(r.stderr.max()) < 1e-6


def test_stops_at_the_requested_standard_error() -> None:
    model = seeded(Mixer)
    r = channel_shapley(model, X, 0, layer="conv", stderr=2e-3, max_permutations=4000)
    assert float(r.stderr.max()) <= 2e-3
    assert r.permutations >= 8
    assert r.permutations % 2 == 0
    loose = channel_shapley(model, X, 0, layer="conv", stderr=0.5)
    assert loose.permutations == 8  # the minimum number of antithetic pairs


def test_same_seed_same_values() -> None:
    model = seeded(Mixer)
    a = channel_shapley(model, X, 0, layer="conv", samples=6, seed=3, batch_size=7)
    b = channel_shapley(model, X, 0, layer="conv", samples=6, seed=3, batch_size=500)
    assert torch.allclose(a.values, b.values, atol=1e-6)


def test_mean_baseline() -> None:
    model = tiny_loaded()
    images = torch.randn(4, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    mean = mean_activation(model, images, "features.0", batch_size=3)
    with torch.no_grad():
        manual = model.module.features(model.module.relu(model.module.bn1(model.module.conv1(images)))).mean(
            0
        )
    assert torch.allclose(mean, manual, atol=1e-6)
    r = channel_shapley(model, images[:1], layer="features.0", baseline=mean)
    assert r.method == "exact"
    assert float(r.values.sum()) == pytest.approx(r.full - r.empty, abs=1e-6)


def test_ranking_and_top() -> None:
    r = channel_shapley(seeded(Mixer), X, 0, layer="conv")
    rows = r.ranking()
    assert [row["rank"] for row in rows] == list(range(1, 9))
    assert all(a["shapley"] >= b["shapley"] for a, b in itertools.pairwise(rows))
    pos, neg = r.top(3)
    assert all(r.values[c] > 0 for c in pos)
    assert all(r.values[c] < 0 for c in neg)
    assert r.summary()["channels"] == 8


def test_bad_settings() -> None:
    model = seeded(Mixer)
    with pytest.raises(ValueError, match="either samples"):
        channel_shapley(model, X, layer="conv", samples=4, stderr=0.1)
    with pytest.raises(ValueError, match="samples must be a positive"):
        channel_shapley(model, X, layer="conv", samples=0)
    with pytest.raises(ValueError, match=r"samples must be a positive integer, got 2\.5 \(float\)"):
        channel_shapley(model, X, layer="conv", samples=2.5)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="max_permutations must be an integer of at least 2, got 1"):
        channel_shapley(model, X, layer="conv", stderr=0.1, max_permutations=1)
    with pytest.raises(ValueError, match="batch_size must be a positive integer, got 0"):
        channel_shapley(model, X, layer="conv", batch_size=0)
    with pytest.raises(ValueError, match="'zero' or a tensor"):
        channel_shapley(model, X, layer="conv", baseline="mean")
    with pytest.raises(ValueError, match="does not fit the layer's output"):
        channel_shapley(model, X, layer="conv", baseline=torch.zeros(3))
    with pytest.raises(ValueError, match="one image at a time"):
        channel_shapley(model, X.repeat(2, 1, 1, 1), layer="conv")
    with pytest.raises(ValueError, match="layer="):
        channel_shapley(model, X)
    with pytest.raises(KeyError, match="closest: conv"):
        channel_shapley(model, X, layer="cnv")
    with pytest.raises(ValueError, match="limited to 16 channels"):
        exact_shapley(CoalitionGame(suffix_runner(model, "conv", X), torch.zeros(1, 8, 8, 8), 0, 8), 17)


def test_model_unchanged_and_clean_after_errors() -> None:
    model = tiny_loaded()
    model.module.train()
    before = snapshot(model.module)
    channel_shapley(model, torch.randn(1, 3, 32, 32), layer="features.0", samples=2)
    assert_same(before, snapshot(model.module))
    failing = FailOnCall(tiny_loaded().module, fail_at=2)
    before = snapshot(failing)
    with pytest.raises(RuntimeError, match="injected failure"):
        channel_shapley(failing, torch.randn(1, 3, 32, 32), layer="inner.features", samples=2)
    assert_same(before, snapshot(failing))
