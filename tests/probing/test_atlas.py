"""Layer attribution and the layer atlas: closed forms, one pass, layer selection, clean-up."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from cnnlens.attribution import create
from cnnlens.attribution.methods.layer import (
    LayerGradientShap,
    LayerIntegratedGradients,
    conv_layers,
    select_layers,
    stage_layers,
)
from cnnlens.probing.atlas import layer_atlas
from tests.attribution.layer_models import LinearAfter, Reversed, seeded
from tests.attribution.test_contract import assert_same, snapshot
from tests.conftest import FailOnCall, tiny_loaded

X = torch.randn(1, 3, 8, 8, generator=torch.Generator().manual_seed(3))


def relu_output(model: LinearAfter, x: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return model.act(model.conv(x))[0]


def test_gradxact_is_weights_times_activation_when_linear_after_the_layer() -> None:
    model = seeded(LinearAfter)
    atlas = layer_atlas(model, X, target=2, layers=["act"])
    a = relu_output(model, X)
    expected = model.weight_map(2, a.shape) * a
    layer = atlas["act"]
    assert layer.shape == (4, 8, 8)
    assert torch.allclose(layer.map, expected.sum(0), atol=1e-6)
    assert torch.allclose(layer.channel_totals, expected.sum((1, 2)), atol=1e-6)
    single = create("layer_gradxact", model, layer="act").explain(X, target=2)
    assert torch.allclose(single.attributions[0], expected.sum(0), atol=1e-6)


@pytest.mark.parametrize("steps", [1, 3, 16])
def test_layer_ig_closed_form_when_linear_after_the_layer(steps: int) -> None:
    model = seeded(LinearAfter)
    atlas = layer_atlas(model, X, target=1, method="ig", layers=["act"], steps=steps, baseline=0.5)
    delta = relu_output(model, X) - relu_output(model, torch.full_like(X, 0.5))
    expected = model.weight_map(1, delta.shape) * delta
    assert torch.allclose(atlas["act"].channel_totals, expected.sum((1, 2)), atol=1e-5)
    with torch.no_grad():
        gap = model(X)[0, 1] - model(torch.full_like(X, 0.5))[0, 1]
    assert float(atlas["act"].channel_totals.sum()) == pytest.approx(float(gap), abs=1e-5)


def test_layer_ig_completeness_at_every_layer() -> None:
    model = tiny_loaded()
    x = torch.randn(1, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    logits = model.logits(torch.cat([x, torch.zeros_like(x)]))
    t = int(logits[0].argmax())
    gap = float(logits[0, t] - logits[1, t])
    errors = {}
    for steps in (2, 64):
        atlas = layer_atlas(model, x, t, method="ig", steps=steps, layers="conv")
        errors[steps] = [abs(float(layer.channel_totals.sum()) - gap) for layer in atlas.layers]
    assert max(errors[64]) < 2e-3 * abs(gap) + 1e-5
    assert max(errors[64]) < max(errors[2])


def test_layer_ig_steps_across_chunks_give_the_same_result() -> None:
    model = tiny_loaded()
    x = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    method = LayerIntegratedGradients(model, steps=9, layer="features.0")
    whole = method.explain(x, target=1, batch_size=100).attributions
    chunked = method.explain(x, target=1, batch_size=4).attributions
    assert torch.allclose(whole, chunked, atol=1e-6)


def test_layer_gradshap_closed_form_when_linear_after_the_layer() -> None:
    model = seeded(LinearAfter)
    bases = torch.randn(3, 3, 8, 8, generator=torch.Generator().manual_seed(5))
    method = LayerGradientShap(model, layer="act", baselines=bases, n_samples=7, seed=4)
    atlas = layer_atlas(model, X, 0, method=method, layers=["act"], batch_size=5)
    which, _, _ = method.draws(X.shape[1:], len(bases))
    a = relu_output(model, X)
    mean_base = torch.stack([relu_output(model, bases[i : i + 1]) for i in which.tolist()]).mean(0)
    expected = model.weight_map(0, a.shape) * (a - mean_base)
    assert torch.allclose(atlas["act"].channel_totals, expected.sum((1, 2)), atol=1e-5)


def test_gradshap_does_not_depend_on_the_batch_size() -> None:
    model = tiny_loaded()
    method = LayerGradientShap(model, layer="conv1", n_samples=5, stdev=0.1)
    a = method.explain(X.repeat(1, 1, 4, 4), target=0, batch_size=3).attributions
    b = method.explain(X.repeat(1, 1, 4, 4), target=0, batch_size=64).attributions
    assert torch.allclose(a, b, atol=1e-6)


def test_atlas_gradcam_equals_gradcam_at_each_layer() -> None:
    model = tiny_loaded()
    x = X.repeat(1, 1, 4, 4)
    atlas = layer_atlas(model, x, 1, method="gradcam", layers="conv")
    for name in ("conv1", "features.0"):
        single = create("gradcam", model, layer=name).explain(x, target=1)
        assert torch.allclose(atlas[name].upsampled, single.attributions[0], atol=1e-6)


def test_one_forward_and_one_backward_for_all_layers(monkeypatch: pytest.MonkeyPatch) -> None:
    model = tiny_loaded()
    calls = {"forward": 0, "grad": 0}
    model.module.register_forward_pre_hook(lambda *_: calls.__setitem__("forward", calls["forward"] + 1))
    real_grad = torch.autograd.grad

    def counting(*args: object, **kwargs: object) -> object:
        calls["grad"] += 1
        return real_grad(*args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(torch.autograd, "grad", counting)
    layers = ["conv1", "bn1", "features.0"]
    atlas = layer_atlas(model, X.repeat(1, 1, 4, 4), method="ig", steps=8, layers=layers)
    assert len(atlas.layers) == 3
    assert calls == {"forward": 2, "grad": 1}  # target resolution + one batched pass over the 9 steps
    calls.update(forward=0, grad=0)
    atlas = layer_atlas(model, X.repeat(1, 1, 4, 4), method="gradxact", layers=layers)
    assert calls == {"forward": 1, "grad": 1}  # the target comes from the same pass
    assert atlas.target == int(model.logits(X.repeat(1, 1, 4, 4)).argmax())


def test_layers_come_in_execution_order() -> None:
    model = seeded(Reversed)
    assert conv_layers(model) == ["late", "early"]
    atlas = layer_atlas(model, X, 0)
    assert atlas.names() == ["early", "late"]
    assert [layer.shape for layer in atlas.layers] == [(3, 8, 8), (4, 8, 8)]


def test_default_layers_per_family() -> None:
    import timm
    import torchvision

    assert list(select_layers(tiny_loaded().module)) == ["conv1", "features.0"]
    assert list(select_layers(torchvision.models.resnet18())) == [
        "layer1",
        "layer2",
        "layer3",
        "layer4",
        "conv1",
    ]
    lite0 = timm.create_model("tf_efficientnet_lite0", pretrained=False)
    assert list(select_layers(lite0)) == [f"blocks.{i}" for i in range(7)] + ["conv_stem", "conv_head"]
    assert len(select_layers(lite0, "conv")) == len(conv_layers(lite0)) > 40
    vgg = nn.Sequential()
    vgg.features = torchvision.models.vgg.make_layers(torchvision.models.vgg.cfgs["A"])  # VGG11's features
    assert stage_layers(vgg) == []
    assert list(select_layers(vgg)) == [f"features.{i}" for i in (0, 3, 6, 8, 11, 13, 16, 18)]


def test_bad_layers() -> None:
    model = tiny_loaded()
    with pytest.raises(KeyError, match="closest: features"):
        layer_atlas(model, X, layers=["featres"])
    with pytest.raises(ValueError, match=r"\(N, C, h, w\) feature map"):
        layer_atlas(model, X.repeat(1, 1, 4, 4), layers=["fc"])
    with pytest.raises(ValueError, match="no recognisable stages"):
        layer_atlas(model, X, layers="stages")
    with pytest.raises(ValueError, match="one image at a time"):
        layer_atlas(model, X.repeat(2, 1, 4, 4))
    with pytest.raises(KeyError, match="unknown atlas method 'gradxct'; closest: gradxact"):
        layer_atlas(model, X, method="gradxct")
    with pytest.raises(ValueError, match="steps must be a positive integer"):
        layer_atlas(model, X, method="ig", steps=0)


def test_layer_that_does_not_run() -> None:
    model = tiny_loaded()
    model.module.spare = nn.Conv2d(3, 3, 1)  # type: ignore[assignment]
    with pytest.raises(ValueError, match="'spare' did not run"):
        layer_atlas(model, X.repeat(1, 1, 4, 4), layers=["spare"])


@pytest.mark.parametrize("method", ["gradxact", "ig", "gradshap", "gradcam"])
def test_model_unchanged_and_hooks_removed(method: str) -> None:
    model = tiny_loaded()
    model.module.train()
    before = snapshot(model.module)
    layer_atlas(model, X.repeat(1, 1, 4, 4), method=method, layers="conv")
    assert_same(before, snapshot(model.module))
    one_pass = method in ("gradxact", "gradcam")  # no separate forward pass to choose the target
    failing = FailOnCall(tiny_loaded().module, fail_at=1 if one_pass else 2)  # fail inside the hooked pass
    before = snapshot(failing)
    with pytest.raises(RuntimeError, match="injected failure"):
        layer_atlas(failing, X.repeat(1, 1, 4, 4), method=method, layers="conv")
    assert_same(before, snapshot(failing))


def test_atlas_save_and_summary(tmp_path: object) -> None:
    import numpy as np

    atlas = layer_atlas(tiny_loaded(), X.repeat(1, 1, 4, 4), target="dog")
    paths = atlas.save(tmp_path)  # type: ignore[arg-type]
    assert [p.name for p in paths] == ["01_conv1.npz", "02_features.0.npz"]
    with np.load(paths[1]) as f:
        assert f["map"].shape == (16, 16)
        assert f["upsampled"].shape == (32, 32)
        assert f["channel_totals"].shape == (6,)
        assert str(f["layer"]) == "features.0"
        assert str(f["target_name"]) == "dog"
        assert f["shape"].tolist() == [6, 16, 16]
    summary = atlas.summary()
    assert summary["target_name"] == "dog"
    assert [la["type"] for la in summary["layers"]] == [
        "Conv2d",
        "Conv2d",
    ]
