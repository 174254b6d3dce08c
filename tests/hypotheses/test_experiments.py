"""Planted truths: a toy that reads only texture (mean colour) is shuffle-invariant and follows a
texture swap; a toy that reads only shape (a dark silhouette) is the opposite; a toy that reads only
one corner needs that part. The verdicts say so."""

from __future__ import annotations

import numpy as np
import pytest

from cnnlens.errors import InputError
from cnnlens.hypothesis import (
    parts_experiment,
    probabilities,
    shape_experiment,
    shuffle_experiment,
    texture_experiment,
)
from cnnlens.hypothesis import variants as V
from cnnlens.hypothesis.experiments import mask_view, model_view
from tests.hypotheses.toys import BLUE, colour_model, corner_model, scene, silhouette_model, texture


def test_texture_model_is_shuffle_invariant_and_follows_the_texture() -> None:
    model = colour_model()
    img, mask = scene()
    shuffle = shuffle_experiment(model, img, grids=(2, 4), n=5, seed=0)
    base = probabilities(model, [img])[0, 0]
    assert all(v.target_top1 for v in shuffle.variants)
    np.testing.assert_allclose(
        [v.target_prob for v in shuffle.variants], base, rtol=1e-5
    )  # exactly invariant
    assert shuffle.verdict.startswith("spatial arrangement does not matter")
    tex = texture_experiment(model, img, mask, texture(BLUE, 5), mode="image")
    assert tex.summary["texture_class"]["name"] == "blue"
    assert tex.summary["in scene"]["winner"] == "texture"
    assert tex.verdict.startswith("texture wins")
    shape = shape_experiment(model, img, mask)
    assert not shape.variants[0].target_top1 and shape.verdict.startswith("shape alone is not enough")


def test_shape_model_needs_the_arrangement_and_ignores_the_texture() -> None:
    model = silhouette_model()
    img, mask = scene()
    shuffle = shuffle_experiment(model, img, grids=(2, 4), n=5, seed=0)
    assert not any(v.target_top1 for v in shuffle.variants)
    assert shuffle.verdict.startswith("spatial arrangement matters")
    tex = texture_experiment(model, img, mask, texture(BLUE, 5), mode="image")
    assert tex.summary["in scene"]["winner"] == "shape"
    assert tex.verdict.startswith("shape wins")
    shape = shape_experiment(model, img, mask)
    assert shape.variants[0].target_top1 and shape.verdict.startswith("the class survives without texture")


def test_a_needed_part_is_named() -> None:
    img, _ = scene()
    parts = V.grid_parts(img.shape, 2)
    corner = parts_experiment(corner_model(), img, parts, fill="black")
    assert [v.target_top1 for v in corner.variants] == [False, True, True, True]
    assert corner.summary["worst_part"] == 0
    assert corner.verdict.startswith("part 0 is needed")
    colour = parts_experiment(colour_model(), img, parts, fill="mean", keep_one=True)
    assert colour.verdict.startswith("no single part is needed")
    assert len(colour.variants) == 8 and colour.summary["top1_rate_keep_one"] == 1.0


def test_deterministic_with_a_seed_and_one_batch_per_experiment() -> None:
    model = colour_model()
    calls = []
    model.module.register_forward_hook(lambda m, i, o: calls.append(len(i[0])))
    img, _ = scene()
    a = shuffle_experiment(model, img, grids=(2, 3), n=4, seed=7)
    assert calls == [1 + 8]  # the unchanged image and every shuffle in one forward pass
    b = shuffle_experiment(model, img, grids=(2, 3), n=4, seed=7)
    c = shuffle_experiment(model, img, grids=(2, 3), n=4, seed=8)
    assert all(np.array_equal(x, y) for x, y in zip(a.images, b.images))
    assert not all(np.array_equal(x, y) for x, y in zip(a.images, c.images))
    assert a.to_dict() == b.to_dict()


def test_target_and_bad_inputs() -> None:
    model = colour_model()
    img, mask = scene()
    r = shuffle_experiment(model, img, grids=(2,), n=2, target="blue")
    assert r.target.name == "blue" and not any(v.target_top1 for v in r.variants)
    with pytest.raises(InputError, match="--n"):
        shuffle_experiment(model, img, n=0)
    with pytest.raises(InputError, match="at least 2"):
        shuffle_experiment(model, img, grids=(1,), n=2)
    with pytest.raises(InputError, match="shape"):
        shape_experiment(model, img, mask[:10])
    with pytest.raises(InputError, match="empty"):
        texture_experiment(model, img, np.zeros_like(mask), img)
    with pytest.raises(InputError, match="no parts"):
        parts_experiment(model, img, [])


def test_views_map_photo_and_mask_alike() -> None:
    from PIL import Image

    model = colour_model()
    photo = np.full((20, 40, 3), 200, np.uint8)
    mask = np.zeros((20, 40), bool)
    mask[:, :20] = True
    photo[mask] = 10
    view = model_view(model, Image.fromarray(photo), "pad")
    mview = mask_view(model, mask, "pad")
    assert view.shape == (64, 64, 3) and mview.shape == (64, 64)
    assert (view[16:48][mview[16:48]].mean() < 40) and (view[16:48][~mview[16:48]].mean() > 160)
    assert (view[:14] == V.NEUTRAL).all() and not mview[:14].any()  # the grey padding
    with pytest.raises(InputError, match="view"):
        model_view(model, Image.fromarray(photo), "stretch")
