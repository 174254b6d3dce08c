"""The contract every registered method must keep, generated from the registry."""

from __future__ import annotations

import copy

import pytest
import torch

from cnnlens import capabilities
from cnnlens.attribution import Explanation, create, get_method, method_names
from cnnlens.attribution.core.base import OnePass
from cnnlens.models import LoadedModel
from cnnlens.models.hooks import hook_counts
from tests.conftest import FailOnCall, tiny_loaded, tiny_spn_loaded

METHODS = method_names()


def model_for(name: str) -> LoadedModel:
    """The tiny test network, or its saliency-aware version for methods that need an SPN."""
    if get_method(name).unsupported(tiny_loaded().module) is None:
        return tiny_loaded()
    model = tiny_spn_loaded()
    assert get_method(name).unsupported(model.module) is None, f"no contract model for {name}"
    return model


def snapshot(model: torch.nn.Module) -> dict[str, object]:
    return {
        "state": {k: v.clone() for k, v in model.state_dict().items()},
        "training": [m.training for m in model.modules()],
        "requires_grad": [p.requires_grad for p in model.parameters()],
        "attrs": [sorted(vars(m)) for m in model.modules()],
        "inplace": [getattr(m, "inplace", None) for m in model.modules()],
        "hooks": hook_counts(model),
    }


def assert_same(before: dict[str, object], after: dict[str, object]) -> None:
    for key in ("training", "requires_grad", "attrs", "inplace", "hooks"):
        assert before[key] == after[key], key
    for k, v in before["state"].items():  # type: ignore[union-attr]
        assert torch.equal(v, after["state"][k]), k  # type: ignore[index]


def small(name: str) -> dict[str, object]:
    """Settings that keep each method fast on 32 px inputs."""
    params = get_method(name).hyperparameters()
    out: dict[str, object] = {}
    small_values = {"window": 8, "stride": 4, "n_samples": 64, "n_masks": 64, "steps": 8}
    small_values |= {"fixed_window": 16, "n_segments": 16, "n_baselines": 2}
    for key, value in small_values.items():
        if key in params:
            out[key] = value
    return out


@pytest.mark.parametrize("name", METHODS)
def test_shape_finite_and_metadata(name: str, images: torch.Tensor) -> None:
    model = model_for(name)
    exp = create(name, model, **small(name)).explain(images)
    assert isinstance(exp, Explanation)
    assert exp.attributions.shape == (3, 32, 32)
    assert exp.attributions.dtype == torch.float32
    assert torch.isfinite(exp.attributions).all()
    assert exp.method == name
    assert exp.targets.tolist() == model.logits(images).argmax(1).tolist()
    assert torch.allclose(exp.scores, model.logits(images).softmax(1).max(1).values, atol=1e-5)
    assert exp.seconds > 0
    assert (exp.layer == "features") == get_method(name).uses_layer


@pytest.mark.parametrize("name", METHODS)
def test_model_left_exactly_as_found(name: str, images: torch.Tensor) -> None:
    model = model_for(name)
    model.module.train()  # a model found in training mode stays in training mode
    list(model.module.parameters())[-1].requires_grad_(False)  # ...and its own requires_grad choices
    before = snapshot(model.module)
    create(name, model, **small(name)).explain(images)
    assert_same(before, snapshot(model.module))


@pytest.mark.parametrize("name", METHODS)
def test_hooks_removed_and_state_restored_after_an_exception(name: str, images: torch.Tensor) -> None:
    inner = tiny_loaded().module
    # the first forward inside the method's own pass: methods that pick their targets from that pass
    # run no earlier forward of the template's
    fail_at = 1 if issubclass(get_method(name), OnePass) else 2
    failing: torch.nn.Module = FailOnCall(inner, fail_at=fail_at)
    if get_method(name).unsupported(failing) is not None:
        failing = tiny_spn_loaded(fail_at=fail_at).module
    before = snapshot(failing)
    method = create(
        name, failing, **small(name), **({"layer": "inner.features"} if get_method(name).uses_layer else {})
    )
    with pytest.raises(RuntimeError, match="injected failure"):
        method.explain(images)
    assert_same(before, snapshot(failing))


@pytest.mark.parametrize("name", METHODS)
def test_batch_equals_items_one_by_one(name: str, images: torch.Tensor) -> None:
    model = model_for(name)
    method = create(name, model, **small(name))
    torch.manual_seed(0)
    batch = method.explain(images)
    for i in range(len(images)):
        torch.manual_seed(0)
        one = method.explain(images[i : i + 1])
        assert torch.allclose(batch.attributions[i], one.attributions[0], atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("name", METHODS)
def test_same_result_twice(name: str, images: torch.Tensor) -> None:
    method = create(name, model_for(name), **small(name))
    a = method.explain(images, target=1)
    b = method.explain(images, target=1)
    assert torch.equal(a.attributions, b.attributions)
    assert a.targets.tolist() == [1, 1, 1]


@pytest.mark.parametrize("name", METHODS)
def test_every_method_is_documented(name: str) -> None:
    cls = get_method(name)
    assert cls.__doc__ and "References:" in cls.__doc__
    assert cls.family in {"gradient", "cam", "perturbation", "surrogate", "layer", "model"}


@pytest.mark.parametrize("name", METHODS)
def test_quick_params_are_real_and_lighter(name: str) -> None:
    cls = get_method(name)
    params = cls.hyperparameters()
    for key, value in cls.quick_params.items():
        assert key in params, f"{name}.quick_params sets unknown parameter {key!r}"
        default = params[key].default
        if isinstance(default, int) and key in {"n_samples", "n_masks", "steps"}:
            assert value < default


def test_unknown_method_suggests_names() -> None:
    with pytest.raises(KeyError, match="closest: gradcam"):
        get_method("gradcm")


def test_unknown_parameter_is_an_error(tiny: object) -> None:
    with pytest.raises(TypeError, match="has no parameter 'windw'"):
        create("occlusion", tiny, windw=3)  # type: ignore[arg-type]


def test_bad_inputs(tiny: object) -> None:
    method = create("saliency", tiny)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match=r"shape \(N, C, H, W\)"):
        method.explain(torch.zeros(32, 32))
    with pytest.raises(TypeError, match="float tensor"):
        method.explain(torch.zeros(1, 3, 32, 32, dtype=torch.uint8))
    with pytest.raises(ValueError, match="expects 3 input channels"):
        method.explain(torch.zeros(1, 1, 32, 32))
    with pytest.raises(ValueError, match="NaN"):
        method.explain(torch.full((1, 3, 32, 32), float("nan")))
    with pytest.raises(TypeError, match="preprocessed image tensor"):
        method.explain([[1.0]])  # type: ignore[arg-type]


def test_layer_given_to_a_method_without_layers(tiny: object) -> None:
    with pytest.raises(ValueError, match="does not use a layer"):
        create("saliency", tiny, layer="features")  # type: ignore[arg-type]


def test_unknown_layer_lists_closest(tiny: object, images: torch.Tensor) -> None:
    with pytest.raises(KeyError, match="closest: features"):
        create("gradcam", tiny, layer="feature").explain(images)  # type: ignore[arg-type]


def test_layer_as_module(images: torch.Tensor) -> None:
    model = tiny_loaded()
    by_module = create("gradcam", model, layer=model.module.features).explain(images)
    by_name = create("gradcam", model, layer="features").explain(images)
    assert torch.equal(by_module.attributions, by_name.attributions)
    foreign = copy.deepcopy(model.module.features)
    with pytest.raises(ValueError, match="not part of the model"):
        create("gradcam", model, layer=foreign).explain(images)


def test_explanation_save_load_and_index(tmp_path: object, images: torch.Tensor) -> None:
    exp = create("gradcam", tiny_loaded()).explain(images, target="dog")
    one = exp[1]
    assert len(one) == 1 and one.target_name() == "dog"
    path = one.save(tmp_path / "x.npz")  # type: ignore[operator]
    import numpy as np

    with np.load(path) as f:
        assert f["attribution"].shape == (32, 32) and f["attribution"].dtype == np.float32
        assert int(f["target"]) == 1 and 0 < float(f["score"]) < 1
    back = Explanation.load(path)
    assert torch.equal(back.attributions, one.attributions)
    with pytest.raises(IndexError):
        exp[3]


@pytest.mark.parametrize("name", [m for m in METHODS if issubclass(get_method(m), OnePass)])
def test_one_pass_methods_take_targets_from_their_own_pass(name: str, images: torch.Tensor) -> None:
    """No forward of the template's: the back-propagated pass gives the target and the score."""
    model = model_for(name)
    calls: list[int] = []
    # counted at the first convolution: DeepLIFT runs a traced copy of the model, whose leaf modules
    # are the model's own but whose top-level forward is not
    first = next(m for m in model.module.modules() if isinstance(m, torch.nn.Conv2d))
    handle = first.register_forward_pre_hook(lambda _m, args: calls.append(len(args[0])))
    try:
        exp = create(name, model, **small(name)).explain(images, batch_size=2)
        passes = 2 if name == "guided_gradcam" else 1  # Grad-CAM's pass, then the guided rule's
        # DeepLIFT: one pass per baseline, and a reference pass of one (shared) image per baseline;
        # LRP: the first image before and after canonizing (the check that it kept the function)
        passes, references = {"deeplift": (1, 1), "deeplift_shap": (2, 2), "lrp": (1, 2)}.get(
            name, (passes, 0)
        )
        assert sum(calls) == passes * len(images) + references
        top = exp.targets
        given = create(name, model, **small(name)).explain(images, target=top.tolist(), batch_size=3)
    finally:
        handle.remove()
    with torch.inference_mode():
        probs = model.module(images).softmax(1)
    assert torch.equal(top, probs.argmax(1))
    assert torch.allclose(exp.scores, probs.gather(1, top[:, None])[:, 0], atol=1e-5)
    assert torch.allclose(exp.attributions, given.attributions, atol=1e-5)
    with pytest.raises(ValueError, match="2 targets for"):
        create(name, model, **small(name)).explain(images, target=[0, 1])
    bf16_runs = capabilities.available("bf16_autocast")
    if bf16_runs and "precision" in get_method(name).hyperparameters():  # targets and scores: fp32 logits
        bf16 = create(name, model, precision="bf16", **small(name)).explain(images)
        assert torch.equal(bf16.targets, top)
        assert torch.allclose(bf16.scores, exp.scores, atol=1e-5)
