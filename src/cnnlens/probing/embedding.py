"""A 2-D map of a layer's feature vectors (t-SNE, UMAP or PCA) and the class pairs the features mix up
most (seed 002 found cucumber vs bitter melon on a UMAP of ResNet features).

t-SNE and UMAP first reduce the features to :data:`PCA_DIMS` dimensions with PCA (the usual step:
faster, and it removes noise dimensions); PCA maps straight to 2-D. The confusable pairs come from the
k nearest neighbours in that reduced feature space, not from the 2-D map, so they do not depend on the
projection.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from cnnlens.errors import InputError
from cnnlens.validation import check_positive_int

METHODS = ("tsne", "umap", "pca")
#: Dimensions kept by the PCA before t-SNE / UMAP and the neighbour search.
PCA_DIMS = 50
#: Neighbours per image for the confusable pairs and the k-NN accuracies.
NEIGHBOURS = 10


def reduce(features: np.ndarray, dims: int = PCA_DIMS, seed: int = 0) -> np.ndarray:
    """The features projected on their first ``dims`` principal components (as they are if fewer)."""
    from sklearn.decomposition import PCA

    x = np.asarray(features, dtype=np.float32)
    keep = min(dims, x.shape[0], x.shape[1])
    if keep >= x.shape[1]:
        return x - x.mean(axis=0)
    return PCA(n_components=keep, random_state=seed).fit_transform(x).astype(np.float32)


def embed_2d(features: np.ndarray, method: str = "tsne", *, seed: int = 0) -> np.ndarray:
    """``(N, 2)`` coordinates of the ``(N, D)`` features.

    Args:
        features: One vector per image.
        method: ``tsne`` (scikit-learn, perplexity ``min(30, (N - 1) / 3)``, PCA init), ``umap``
            (umap-learn, 15 neighbours) or ``pca``.
        seed: Random state (same seed, same map).

    Raises:
        InputError: Unknown method, or fewer than 4 images.

    References:
        van der Maaten, Hinton. Visualizing Data using t-SNE. JMLR 2008.
        McInnes, Healy, Melville. UMAP: Uniform Manifold Approximation and Projection. 2018.
    """
    if method not in METHODS:
        raise InputError(f"method must be one of {', '.join(METHODS)}, got {method!r}")
    x = np.asarray(features, dtype=np.float32)
    if x.ndim != 2 or len(x) < 4:
        raise InputError(f"a 2-D map needs at least 4 feature vectors, got {len(x)}")
    if method == "pca":
        return reduce(x, 2, seed)
    z = reduce(x, PCA_DIMS, seed)
    if method == "tsne":
        from sklearn.manifold import TSNE

        perplexity = float(min(30.0, (len(z) - 1) / 3))
        out = TSNE(2, perplexity=perplexity, init="pca", random_state=seed).fit_transform(z)
    else:
        try:
            import umap
        except ImportError as err:
            raise InputError("--method umap needs umap-learn: pip install 'cnnlens[probe]'") from err

        reducer = umap.UMAP(n_components=2, n_neighbors=min(15, len(z) - 1), random_state=seed, n_jobs=1)
        out = reducer.fit_transform(z)
    return np.asarray(out, dtype=np.float32)


@dataclass(frozen=True)
class Separation:
    """How well the classes separate, in the feature space and on the 2-D map.

    Attributes:
        knn_features: Leave-one-out k-NN accuracy in the (PCA-reduced) feature space.
        knn_map: The same on the 2-D map.
        silhouette_map: Silhouette score of the classes on the 2-D map (-1..1).
        pairs: The most confusable class pairs, most first: ``(a, b, overlap)`` where ``overlap`` is
            the share of the k nearest neighbours of the images of ``a`` and ``b`` that belong to the
            other class of the pair.
    """

    knn_features: float
    knn_map: float
    silhouette_map: float
    pairs: list[tuple[int, int, float]]

    def to_dict(self, names: list[str] | None = None) -> dict[str, Any]:
        def name(c: int) -> str | int:
            return names[c] if names and 0 <= c < len(names) else c

        return {
            "knn_accuracy_features": self.knn_features,
            "knn_accuracy_map": self.knn_map,
            "silhouette_map": self.silhouette_map,
            "neighbours": NEIGHBOURS,
            "confusable_pairs": [{"a": name(a), "b": name(b), "overlap": o} for a, b, o in self.pairs],
        }


def _neighbour_labels(x: np.ndarray, labels: np.ndarray, k: int) -> np.ndarray:
    """``(N, k)`` the labels of each point's ``k`` nearest other points."""
    from sklearn.neighbors import NearestNeighbors

    nn = NearestNeighbors(n_neighbors=k + 1).fit(x)
    index = nn.kneighbors(x, return_distance=False)[:, 1:]
    return labels[index]


def _knn_accuracy(near: np.ndarray, labels: np.ndarray) -> float:
    votes = np.array([np.bincount(row, minlength=labels.max() + 1).argmax() for row in near])
    return float((votes == labels).mean())


def separation(
    features: np.ndarray, coords: np.ndarray, labels: np.ndarray, *, top: int = 5, seed: int = 0
) -> Separation:
    """k-NN accuracies, the silhouette of the map and the ``top`` most confusable class pairs.

    Args:
        features: ``(N, D)`` feature vectors.
        coords: ``(N, 2)`` their map.
        labels: ``(N,)`` class indices (at least two classes, no ``-1``).
        top: Pairs to list.
        seed: Random state of the PCA reduction.

    Raises:
        InputError: Unlabelled images, one class only, or too few images.
    """
    from sklearn.metrics import silhouette_score

    check_positive_int("top", top)
    y = np.asarray(labels, dtype=np.int64)
    if (y < 0).any():
        raise InputError("class separation needs labelled images (a class-folder dataset or a manifest)")
    classes = np.unique(y)
    if len(classes) < 2:
        raise InputError("class separation needs at least two classes")
    k = min(NEIGHBOURS, len(y) - 1)
    near = _neighbour_labels(reduce(features, PCA_DIMS, seed), y, k)
    near_map = _neighbour_labels(np.asarray(coords, dtype=np.float64), y, k)
    sample = min(len(y), 5000)
    silhouette = float(silhouette_score(coords, y, sample_size=sample, random_state=seed))
    counts = np.bincount(y, minlength=int(y.max()) + 1)
    mixed = np.zeros((len(counts), len(counts)))
    for c in classes:
        mixed[c] = np.bincount(near[y == c].ravel(), minlength=len(counts))
    pairs = []
    for i, a in enumerate(classes):
        for b in classes[i + 1 :]:
            overlap = (mixed[a, b] + mixed[b, a]) / (k * (counts[a] + counts[b]))
            pairs.append((int(a), int(b), float(overlap)))
    pairs.sort(key=lambda p: -p[2])
    return Separation(_knn_accuracy(near, y), _knn_accuracy(near_map, y), silhouette, pairs[:top])
