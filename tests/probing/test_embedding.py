"""2-D maps of well separated features separate the classes; the confusable pair is the one planted."""

from __future__ import annotations

import numpy as np
import pytest

from cnnlens.errors import InputError
from cnnlens.probing.embedding import embed_2d, separation


def clusters(
    centres: list[float], per: int = 40, dims: int = 20, seed: int = 0
) -> tuple[np.ndarray, np.ndarray]:
    """``len(centres)`` Gaussian classes (sd 1) whose centres lie on one axis at the given places."""
    rng = np.random.default_rng(seed)
    x = np.concatenate([rng.normal(size=(per, dims)) + np.eye(dims)[0] * c for c in centres])
    return x.astype(np.float32), np.repeat(np.arange(len(centres)), per)


@pytest.mark.parametrize("method", ["pca", "tsne"])  # umap: numba compiles for minutes on first use
def test_a_map_of_separated_classes_separates_them(method: str) -> None:
    x, y = clusters([0.0, 12.0, 24.0])
    coords = embed_2d(x, method, seed=0)
    assert coords.shape == (120, 2)
    sep = separation(x, coords, y)
    assert sep.knn_features == 1.0
    assert sep.knn_map >= 0.97
    assert sep.silhouette_map > 0.5


def test_same_seed_same_map() -> None:
    x, _ = clusters([0.0, 12.0])
    assert np.array_equal(embed_2d(x, "tsne", seed=1), embed_2d(x, "tsne", seed=1))


def test_the_overlapping_pair_is_the_most_confusable() -> None:
    x, y = clusters([0.0, 1.0, 20.0, 40.0])  # classes 0 and 1 overlap, 2 and 3 are far away
    sep = separation(x, embed_2d(x, "pca"), y, top=3)
    a, b, overlap = sep.pairs[0]
    assert (a, b) == (0, 1) and overlap > 0.1
    assert all(o == 0.0 for _, _, o in sep.pairs[1:])


def test_bad_inputs() -> None:
    x, _ = clusters([0.0, 12.0])
    with pytest.raises(InputError, match="method must be"):
        embed_2d(x, "lda")
    with pytest.raises(InputError, match="at least 4"):
        embed_2d(x[:3], "pca")
    with pytest.raises(InputError, match="labelled"):
        separation(x, x[:, :2], -np.ones(len(x), dtype=int))
    with pytest.raises(InputError, match="two classes"):
        separation(x, x[:, :2], np.zeros(len(x), dtype=int))
