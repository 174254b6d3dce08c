"""The public API: method classes at the top level."""

from __future__ import annotations

import pytest
import torch

import cnnlens
from cnnlens import GradCAM, LoadedModel
from cnnlens.attribution import get_method, method_names
from tests.conftest import tiny_loaded, tiny_spn_loaded


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
