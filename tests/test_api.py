"""The public API: method classes at the top level, and explanations that remember the preprocessing."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import cnnlens
from cnnlens import Explanation, GradCAM, LoadedModel
from cnnlens.attribution import get_method, method_names
from cnnlens.data.transforms import Preprocessing
from tests.conftest import tiny_loaded, tiny_spn_loaded

#: Resize and crop, so that the part of the photo the model saw is not the whole photo.
CROPPING = Preprocessing(resize=40, crop=32, mean=(0.5,) * 3, std=(0.25,) * 3)


def photo(width: int = 90, height: int = 60) -> Image.Image:
    """A random RGB photo larger than the model input, not square."""
    rng = np.random.default_rng(3)
    return Image.fromarray(rng.integers(0, 256, (height, width, 3), dtype=np.uint8))


def cropping_model() -> LoadedModel:
    return replace(tiny_loaded(), preprocessing=CROPPING)


def model_for(name: str) -> LoadedModel:
    return tiny_spn_loaded() if name == "spn" else tiny_loaded()


@pytest.mark.parametrize("name", method_names())
def test_every_registered_method_class_is_exported_by_name(name: str) -> None:
    cls = get_method(name)
    assert getattr(cnnlens, cls.__name__, None) is cls
    assert cls.__name__ in cnnlens.__all__


def test_all_names_exist() -> None:
    missing = [n for n in cnnlens.__all__ if not hasattr(cnnlens, n)]
    assert missing == []


@pytest.mark.parametrize("name", method_names())
def test_class_call_equals_registry_call(name: str, images: torch.Tensor) -> None:
    model = model_for(name)
    cls = get_method(name)
    params = dict(cls.quick_params)
    by_class = getattr(cnnlens, cls.__name__)(model, **params)(images, target=1)
    by_name = cnnlens.create(name, model, **params).explain(images, 1)
    assert torch.equal(by_class.attributions, by_name.attributions)
    assert torch.equal(by_class.targets, by_name.targets) and by_class.targets.tolist() == [1, 1, 1]
    assert torch.equal(by_class.scores, by_name.scores)
    assert (by_class.method, by_class.layer, by_class.params) == (name, by_name.layer, by_name.params)


def test_gradcam_class_with_a_layer_and_a_class_name(images: torch.Tensor) -> None:
    model = tiny_loaded()
    exp = GradCAM(model, layer="features.0")(images, target="dog")
    same = cnnlens.create("gradcam", model, layer="features.0").explain(images, target=1)
    assert exp.layer == "features.0" and exp.target_name(2) == "dog"
    assert torch.equal(exp.attributions, same.attributions)
    default = GradCAM(model)(images, target="dog")
    assert default.layer == "features" and not torch.equal(default.attributions, exp.attributions)


def test_explain_keeps_the_models_preprocessing(images: torch.Tensor) -> None:
    model = cropping_model()
    assert GradCAM(model)(images).preprocessing == CROPPING
    assert GradCAM(model.module)(images).preprocessing is None  # a bare module has none


def test_render_uses_the_explanations_preprocessing() -> None:
    model, image = cropping_model(), photo()
    exp = cnnlens.explain(model, image, method="gradcam")
    implicit = exp.render(image)
    explicit = exp.render(image, preprocessing=model.preprocessing)
    assert implicit.size == explicit.size == (48, 48)  # the 60 px short side resized to 40, cropped to 32
    assert np.array_equal(np.asarray(implicit), np.asarray(explicit))
    bare = replace(exp, preprocessing=None).render(image)  # without one: the image as the model input
    assert bare.size == image.size


def test_render_given_preprocessing_overrides_the_carried_one() -> None:
    model, image = cropping_model(), photo()
    exp = cnnlens.explain(model, image, method="gradcam")
    other = Preprocessing(resize=None, crop=32, mean=(0.5,) * 3, std=(0.25,) * 3)
    assert exp.render(image, preprocessing=other).size == (32, 32)


def test_render_mask_uses_the_explanations_preprocessing() -> None:
    image = photo()
    mask = torch.zeros(1, 32, 32, dtype=torch.bool)
    mask[0, 8:24, 4:20] = True
    exp = Explanation(
        attributions=torch.rand(1, 32, 32),
        targets=torch.tensor([0]),
        scores=torch.tensor([0.5]),
        method="lime",
        extras={"top_mask": mask},
        preprocessing=CROPPING,
    )
    implicit = np.asarray(exp.render_mask(image))
    assert implicit.shape == (48, 48, 3)
    assert np.array_equal(implicit, np.asarray(exp.render_mask(image, preprocessing=CROPPING)))


def test_preprocessing_survives_save_and_load(tmp_path: Path) -> None:
    model, image = cropping_model(), photo()
    exp = cnnlens.explain(model, image, method="gradcam")
    back = Explanation.load(exp.save(tmp_path / "e.npz"))
    assert back.preprocessing == CROPPING
    assert np.array_equal(np.asarray(back.render(image)), np.asarray(exp.render(image)))
    assert back[0].preprocessing == CROPPING


def test_an_explanation_without_preprocessing_loads_without_one(tmp_path: Path) -> None:
    exp = replace(cnnlens.explain(cropping_model(), photo(), method="gradcam"), preprocessing=None)
    path = exp.save(tmp_path / "e.npz")
    with np.load(path) as f:
        assert "preprocessing" not in f  # files written before the field have no such key either
    assert Explanation.load(path).preprocessing is None
