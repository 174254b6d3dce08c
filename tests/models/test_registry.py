"""The model registry: offline default, torchvision/timm names, checkpoints, weights files, layers."""

from __future__ import annotations

import time
import urllib.error
from pathlib import Path

import pytest
import torch

from cnnlens.errors import ModelLoadError
from cnnlens.models import LoadedModel, list_models, load_model, save_checkpoint
from cnnlens.models.layers import resolve_layer


@pytest.mark.slow
def test_offline_default_predicts_a_cat(lite0: LoadedModel) -> None:
    from cnnlens.data import load_sample

    top = lite0.top_k(lite0.prepare(load_sample("chelsea")), 5)[0]
    assert top[0][1] in {"Egyptian cat", "tabby", "tiger cat"}
    assert lite0.num_classes == 1000 and lite0.default_layer == "bn2"
    assert "conv_head" in lite0.layers()


def test_list_models_marks_offline() -> None:
    rows = {r.name: r for r in list_models()}
    assert rows["efficientnet_lite0"].offline
    assert "resnet50" in rows and "vgg19" in rows


def test_unknown_model_suggests() -> None:
    with pytest.raises(KeyError, match="closest: .*resnet50"):
        load_model("resnet5O")


def test_random_init_and_default_layers() -> None:
    r18 = load_model("resnet18", pretrained=False)
    assert r18.default_layer == "layer4" and r18.num_classes == 1000
    assert r18.class_names[281] == "tabby"
    assert r18.preprocessing.crop == 224
    timm_model = load_model("resnet10t", pretrained=False)
    assert timm_model.arch_source == "timm" and timm_model.default_layer == "layer4"


def test_torchvision_offline_fails_at_once_with_a_hint(monkeypatch: pytest.MonkeyPatch) -> None:
    def no_network(*args: object, **kwargs: object) -> None:
        raise urllib.error.URLError("Name or service not known")

    monkeypatch.setattr(torch.hub, "load_state_dict_from_url", no_network)
    start = time.perf_counter()
    with pytest.raises(ModelLoadError, match=r"--weights FILE.*--no-pretrained"):
        load_model("resnet18")
    assert time.perf_counter() - start < 10


def test_timm_offline_fails_at_once(monkeypatch: pytest.MonkeyPatch) -> None:
    from cnnlens.models import registry

    monkeypatch.setattr(registry, "_network_reachable", lambda *a, **k: False)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    start = time.perf_counter()
    with pytest.raises(ModelLoadError, match="--weights FILE"):
        load_model("resnet10t")
    assert time.perf_counter() - start < 10


def test_weights_file_with_other_class_count(tmp_path: Path) -> None:
    import torchvision

    net = torchvision.models.resnet18(num_classes=7)
    path = tmp_path / "r18.pth"
    torch.save({"state_dict": {f"module.{k}": v for k, v in net.state_dict().items()}}, path)
    model = load_model("resnet18", weights=path)
    assert model.num_classes == 7 and model.head == "linear"
    assert torch.equal(model.module.fc.weight, net.fc.weight)


def test_weights_that_do_not_fit(tmp_path: Path) -> None:
    import torchvision

    path = tmp_path / "vgg.pth"
    torch.save(torchvision.models.resnet18().state_dict(), path)
    with pytest.raises(ModelLoadError, match="do not fit"):
        load_model("squeezenet1_0", weights=path)


def test_plain_state_dict_as_model_says_how(tmp_path: Path) -> None:
    path = tmp_path / "plain.pt"
    torch.save({"w": torch.zeros(2)}, path)
    with pytest.raises(ModelLoadError, match=r"--model ARCH --weights"):
        load_model(path)


def test_missing_and_corrupt_checkpoints(tmp_path: Path) -> None:
    with pytest.raises(ModelLoadError, match="no such checkpoint"):
        load_model(tmp_path / "missing.pt")
    bad = tmp_path / "bad.pt"
    bad.write_bytes(b"not a checkpoint")
    with pytest.raises(ModelLoadError, match="not a checkpoint cnnlens can load safely"):
        load_model(bad)
    with pytest.raises(ModelLoadError, match="not a run folder"):
        load_model(tmp_path)


def test_checkpoint_round_trip_with_mlp64_head(tmp_path: Path) -> None:
    from cnnlens.models import apply_head

    model = load_model("vgg11", pretrained=False)
    apply_head(model.module, "mlp64", 2)
    model.head, model.class_names = "mlp64", ["cat", "dog"]
    (tmp_path / "run").mkdir()
    save_checkpoint(model, tmp_path / "run" / "best.pt")
    back = load_model(tmp_path / "run")
    assert back.class_names == ["cat", "dog"] and back.head == "mlp64"
    assert isinstance(back.module.classifier[1], torch.nn.Linear)
    assert back.module.classifier[1].in_features == 512 * 7 * 7
    x = torch.randn(1, 3, 224, 224)
    assert torch.allclose(back.logits(x), model.logits(x), atol=1e-5)


def test_layer_lookup() -> None:
    r18 = load_model("resnet18", pretrained=False)
    name, module = resolve_layer(r18.module, "layer3.1.conv2")
    assert name == "layer3.1.conv2" and isinstance(module, torch.nn.Conv2d)
    with pytest.raises(KeyError, match=r"closest: .*layer3\.1\.conv2"):
        resolve_layer(r18.module, "layer3.1.conv3")
    with pytest.raises(TypeError, match="dotted name or an nn.Module"):
        resolve_layer(r18.module, 3)  # type: ignore[arg-type]
    table = {info.name: info for info in r18.layer_table}
    assert table["layer4"].output_shape == (512, 7, 7)


def test_default_cam_layer_passes_over_adaptive_pooling() -> None:
    import torchvision

    from cnnlens.models.layers import default_cam_layer

    # VGG's avgpool (AdaptiveAvgPool2d(7)) outputs a 7x7 map too, but only resamples `features`
    assert default_cam_layer(torchvision.models.vgg11(), (64, 64)) == "features"
    assert default_cam_layer(torchvision.models.resnet18(), (64, 64)) == "layer4"
