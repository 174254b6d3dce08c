"""Feature vectors and nearest neighbours: an image's own duplicates come first, in feature space and
in pixel space, and the streamed search agrees with a search over all features at once."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from cnnlens.errors import CnnlensError
from cnnlens.probing.features import extract_features, nearest_neighbours, pixels, pooled
from cnnlens.probing.stream import batches_of
from tests.conftest import tiny_loaded
from tests.probing.toys import noise

DUPLICATES = (5, 17, 29)


def dataset() -> tuple[torch.Tensor, torch.Tensor]:
    x = noise(32, 32, seed=3) * 10 - 0.5  # spread over the model's input range
    query = noise(1, 32, seed=4) * 10 - 0.5
    for i in DUPLICATES:
        x[i] = query[0]
    return x, query


@pytest.mark.parametrize("metric", ["cosine", "l2"])
def test_duplicates_of_the_query_are_its_nearest_neighbours(metric: str) -> None:
    model = tiny_loaded()
    x, query = dataset()
    found = nearest_neighbours(model, query, batches_of(x, batch_size=7), "features", k=5, metric=metric)
    assert {i for i, _ in found.feature[:3]} == set(DUPLICATES)
    assert {i for i, _ in found.pixel[:3]} == set(DUPLICATES)
    best = 1.0 if metric == "cosine" else 0.0
    assert [s for _, s in found.feature[:3]] == pytest.approx([best] * 3, abs=1e-4)
    assert [d for _, d in found.pixel[:3]] == pytest.approx([0.0] * 3, abs=1e-4)
    assert found.images_seen == 32 and len(found.feature) == len(found.pixel) == 5


def test_streamed_search_equals_the_search_over_all_features() -> None:
    model = tiny_loaded()
    x, query = dataset()
    feats = extract_features(model, batches_of(x, batch_size=5), "features")
    assert feats.values.shape == (32, 6) and torch.equal(feats.indices, torch.arange(32))
    q = extract_features(model, batches_of(query), "features").values
    expect = torch.topk((F.normalize(feats.values, dim=1) @ F.normalize(q, dim=1).T)[:, 0], 8)
    found = nearest_neighbours(model, query, batches_of(x, batch_size=5), "features", k=8)
    assert [s for _, s in found.feature] == pytest.approx(expect.values.tolist(), abs=1e-5)
    dist = (pixels(x) - pixels(query)).norm(dim=1)
    assert [d for _, d in found.pixel] == pytest.approx(torch.sort(dist).values[:8].tolist(), abs=1e-4)


def test_features_of_a_linear_layer_and_flattened_maps() -> None:
    model = tiny_loaded()
    x, _ = dataset()
    assert extract_features(model, batches_of(x), "fc").values.shape == (32, 3)
    assert extract_features(model, batches_of(x), "features", pool="flatten").values.shape == (
        32,
        6 * 16 * 16,
    )
    a = torch.arange(24.0).view(1, 2, 3, 4)
    assert pooled(a, "avg").tolist() == [[5.5, 17.5]]


def test_thumbnails_only_for_the_first_images() -> None:
    x, _ = dataset()
    feats = extract_features(
        tiny_loaded(), batches_of(x, batch_size=4), "features",
        thumbnail=lambda t: torch.zeros(len(t), 3, 8, 8, dtype=torch.uint8), thumbnails=10,
    )  # fmt: skip
    assert feats.thumbnails is not None and feats.thumbnails.shape == (10, 3, 8, 8)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [({"k": 0}, "k must be"), ({"metric": "cos"}, "metric must be"), ({"pool": "max"}, "pool must be")],
)
def test_bad_inputs_are_one_line_errors(kwargs: dict, message: str) -> None:
    x, query = dataset()
    with pytest.raises(CnnlensError, match=message):
        nearest_neighbours(tiny_loaded(), query, batches_of(x), "features", **kwargs)
