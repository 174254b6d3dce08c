"""The variant makers against closed forms: a shuffle permutes pixels, an occlusion touches only its
part, a texture swap only the mask, the parts partition the image; bad inputs are one InputError."""

from __future__ import annotations

import numpy as np
import pytest

from cnnlens.errors import InputError
from cnnlens.hypothesis import variants as V


def random_image(h: int = 30, w: int = 34, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)


def pixels(im: np.ndarray) -> np.ndarray:
    flat = im.reshape(-1, 3)
    return flat[np.lexsort(flat.T[::-1])]


@pytest.mark.parametrize("n", [2, 3, 4, 7])
def test_jigsaw_is_a_permutation_of_tiles(n: int) -> None:
    im = random_image()
    perm = V.random_permutation(n * n, np.random.default_rng(n))
    out = V.jigsaw(im, n, perm)
    np.testing.assert_array_equal(pixels(out), pixels(im))  # the same multiset of pixels
    th, tw = im.shape[0] // n, im.shape[1] // n
    for k, src in enumerate(perm):  # tile k of the output is tile perm[k] of the input
        i, j = divmod(k, n)
        si, sj = divmod(int(src), n)
        np.testing.assert_array_equal(
            out[i * th : (i + 1) * th, j * tw : (j + 1) * tw],
            im[si * th : (si + 1) * th, sj * tw : (sj + 1) * tw],
        )
    np.testing.assert_array_equal(out[n * th :], im[n * th :])  # the remainder stays
    np.testing.assert_array_equal(out[:, n * tw :], im[:, n * tw :])


def test_jigsaw_identity_and_box() -> None:
    im = random_image()
    np.testing.assert_array_equal(V.jigsaw(im, 3, np.arange(9)), im)
    box = (5, 6, 25, 30)
    out = V.jigsaw(im, 2, np.array([3, 2, 1, 0]), box)
    outside = np.ones(im.shape[:2], bool)
    outside[5:25, 6:30] = False
    np.testing.assert_array_equal(out[outside], im[outside])
    assert not np.array_equal(out, im)
    np.testing.assert_array_equal(pixels(out[5:25, 6:30]), pixels(im[5:25, 6:30]))


def test_random_permutation_is_never_the_identity() -> None:
    rng = np.random.default_rng(0)
    for _ in range(200):
        assert not np.array_equal(V.random_permutation(2, rng), [0, 1])


@pytest.mark.parametrize("fill", V.FILLS)
def test_occlusion_touches_only_the_part(fill: str) -> None:
    im = random_image()
    part = np.zeros(im.shape[:2], bool)
    part[3:12, 20:31] = True
    filler = V.fill_image(im, fill, np.random.default_rng(0))
    out = V.occlude(im, part, filler)
    np.testing.assert_array_equal(out[~part], im[~part])
    np.testing.assert_array_equal(out[part], filler[part])


def test_fills_closed_forms() -> None:
    im = random_image()
    mean = V.fill_image(im, "mean", np.random.default_rng(0))
    np.testing.assert_array_equal(mean[0, 0], im.reshape(-1, 3).mean(0).round())
    assert (mean == mean[0, 0]).all()
    assert not V.fill_image(im, "black", np.random.default_rng(0)).any()
    a = V.fill_image(im, "noise", np.random.default_rng(3))
    np.testing.assert_array_equal(a, V.fill_image(im, "noise", np.random.default_rng(3)))
    blur = V.fill_image(im, "blur", np.random.default_rng(0)).astype(float)
    assert blur.std() < im.astype(float).std() / 2
    with pytest.raises(InputError, match="unknown fill"):
        V.fill_image(im, "pink", np.random.default_rng(0))


@pytest.mark.parametrize("n", [2, 3, 5])
def test_grid_parts_partition_the_image(n: int) -> None:
    parts = V.grid_parts((30, 34, 3), n)
    assert len(parts) == n * n
    np.testing.assert_array_equal(np.sum(parts, axis=0), np.ones((30, 34)))


@pytest.mark.parametrize("n", [0, 1, -3])
def test_grid_of_one_or_less_is_refused(n: int) -> None:
    with pytest.raises(InputError, match="at least 2"):
        V.grid_parts((30, 34, 3), n)
    with pytest.raises(InputError, match="at least 2"):
        V.jigsaw(random_image(), n, np.arange(max(n, 0) ** 2))


def test_superpixels_partition_the_image_deterministically() -> None:
    im = np.zeros((40, 40, 3), np.uint8)
    im[:20, :20], im[20:, 20:], im[:20, 20:] = (200, 30, 30), (30, 200, 30), (30, 30, 200)
    parts = V.superpixel_parts(im, 6)
    assert len(parts) >= 2
    np.testing.assert_array_equal(np.sum(parts, axis=0), np.ones((40, 40)))
    again = V.superpixel_parts(im, 6)
    assert all(np.array_equal(a, b) for a, b in zip(parts, again))


def test_label_and_box_parts() -> None:
    labels = np.zeros((10, 10), int)
    labels[:3, :3], labels[6:, 6:] = 4, 9
    parts = V.label_parts(labels)
    assert [int(p.sum()) for p in parts] == [9, 16]
    binary = labels > 0
    assert [int(p.sum()) for p in V.label_parts(binary.astype(int))] == [9, 16]  # components
    (box,) = V.box_parts((10, 12), [(2, 1, 5, 4)])
    assert box.sum() == 9 and box[1:4, 2:5].all()
    with pytest.raises(InputError, match="not inside"):
        V.box_parts((10, 12), [(2, 1, 20, 4)])
    with pytest.raises(InputError, match="empty"):
        V.label_parts(np.zeros((4, 4), int))


def test_masks_of_wrong_size_or_empty_are_refused() -> None:
    with pytest.raises(InputError, match="shape"):
        V.check_mask(np.ones((5, 5), bool), (6, 5, 3))
    with pytest.raises(InputError, match="empty"):
        V.check_mask(np.zeros((5, 5), bool), (5, 5, 3))
    with pytest.raises(InputError, match="whole image"):
        V.check_object(np.ones((5, 5), bool), (5, 5, 3))


def test_silhouette_outline_and_background() -> None:
    mask = np.zeros((20, 20), bool)
    mask[4:16, 5:15] = True
    sil = V.silhouette(mask)
    assert (sil[mask] == 0).all() and (sil[~mask] == 255).all()
    edge = V.outline(mask, 2)[..., 0] == 0
    assert (edge <= mask).all() and edge[4, 5] and not edge[10, 10]
    assert edge.sum() == mask.sum() - (12 - 4) * (10 - 4)  # a 2-pixel band inside the edge
    im = random_image(20, 20)
    bg = V.on_background(im, mask)
    np.testing.assert_array_equal(bg[mask], im[mask])
    assert (bg[~mask] == V.NEUTRAL).all()


def test_texture_fields() -> None:
    src = random_image(40, 50)
    rng = np.random.default_rng(0)
    tiled = V.texture_field(src, (64, 64, 3), "tile", rng, patch=10)
    np.testing.assert_array_equal(tiled[:10, :10], src[15:25, 20:30])  # the central patch
    np.testing.assert_array_equal(tiled[10:], tiled[:-10])  # periodic
    a = V.texture_field(src, (64, 64, 3), "patches", np.random.default_rng(4), patch=8)
    b = V.texture_field(src, (64, 64, 3), "patches", np.random.default_rng(4), patch=8)
    np.testing.assert_array_equal(a, b)
    assert a.shape == (64, 64, 3)
    colours = {tuple(c) for c in src.reshape(-1, 3)}
    assert all(tuple(c) in colours for c in a.reshape(-1, 3)[::37])  # cut from the source
    assert V.texture_field(src, (32, 48, 3), "image", rng).shape == (32, 48, 3)
    with pytest.raises(InputError, match="texture mode"):
        V.texture_field(src, (8, 8, 3), "smear", rng)


def test_texture_swap_changes_only_the_mask() -> None:
    im, tex = random_image(), random_image(seed=1)
    mask = np.zeros(im.shape[:2], bool)
    mask[10:20, 10:25] = True
    out = V.texture_swap(im, mask, tex)
    np.testing.assert_array_equal(out[~mask], im[~mask])
    np.testing.assert_array_equal(out[mask], tex[mask])
    grey = V.texture_swap(im, mask, tex, V.NEUTRAL)
    assert (grey[~mask] == V.NEUTRAL).all()


def test_bounding_box() -> None:
    mask = np.zeros((10, 12), bool)
    mask[2:5, 3:9] = True
    assert V.bounding_box(mask) == (2, 3, 5, 9)
