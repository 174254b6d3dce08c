"""``cnnlens layers`` and ``cnnlens channels`` run for real, on cnnlens checkpoints.

The seed 000 model: a VGG19 backbone with the head Flatten -> Dense 64 -> ReLU -> Dropout -> Dense 2
(random weights, 64 px inputs so it stays fast), saved with ``save_checkpoint`` and loaded by path.
"""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
import torch

from cnnlens.cli import main
from cnnlens.data import load_sample
from cnnlens.data.transforms import Preprocessing
from cnnlens.models import LoadedModel, apply_head, load_model, save_checkpoint

pytestmark = pytest.mark.slow  # commands on VGG19 / ResNet-18 checkpoints, and loading them


def saved(tmp: Path, arch: str, head: str, classes: list[str]) -> tuple[LoadedModel, Path]:
    """A random-weight ``arch`` with ``head``, and the cnnlens checkpoint it was saved to."""
    import torchvision

    torch.manual_seed(0)
    module = torchvision.models.get_model(arch, weights=None)
    apply_head(module, head, len(classes))
    loaded = LoadedModel(
        module=module.eval(),
        name=arch,
        arch=arch,
        class_names=classes,
        preprocessing=Preprocessing(resize=64, crop=64),
        default_layer=None,
        source="test",
        head=head,
        arch_source="torchvision",
    )
    return loaded, save_checkpoint(loaded, tmp / f"{arch}.pt")


@pytest.fixture(scope="module")
def seed(tmp_path_factory: pytest.TempPathFactory) -> tuple[LoadedModel, Path]:
    return saved(tmp_path_factory.mktemp("seed"), "vgg19", "mlp64", ["cat", "dog"])


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory, seed: tuple[LoadedModel, Path]) -> dict[str, Path]:
    tmp = tmp_path_factory.mktemp("layers-cli")
    images = {}
    for name in ("chelsea", "coffee"):
        images[name] = tmp / f"{name}.png"
        load_sample(name).save(images[name])
    bad = tmp / "broken.jpg"
    bad.write_bytes(b"not an image")
    return {
        **images,
        "broken": bad,
        "vgg19": seed[1],
        "resnet18": saved(tmp, "resnet18", "linear", ["cat", "dog", "bird"])[1],
    }


@pytest.fixture
def cached_seed_model(seed: tuple[LoadedModel, Path], monkeypatch: pytest.MonkeyPatch) -> None:
    """Commands get the seed model without rebuilding VGG19 (seconds); the load itself is tested below."""
    import cnnlens.cli.common as common

    real = common.load_model

    def load(spec: object, **kwargs: object) -> LoadedModel:
        return seed[0] if str(spec) == str(seed[1]) else real(spec, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(common, "load_model", load)


def test_seed_000_model_loads_from_its_checkpoint(seed: tuple[LoadedModel, Path]) -> None:
    model = load_model(seed[1])
    assert model.head == "mlp64"
    assert model.class_names == ["cat", "dog"]
    x = torch.randn(2, 3, 64, 64)
    assert torch.allclose(model.logits(x), seed[0].logits(x), atol=1e-5)
    head = model.module.classifier
    assert [type(m).__name__ for m in head] == ["Flatten", "Linear", "ReLU", "Dropout", "Linear"]
    assert head[1].in_features == 25088
    assert head[1].out_features == 64
    assert head[4].out_features == 2


@pytest.mark.usefixtures("cached_seed_model")
def test_layers_atlas_of_the_seed_model(files: dict[str, Path], tmp_path: Path) -> None:
    out = tmp_path / "atlas"
    code = main(
        [
            "layers",
            str(files["chelsea"]),
            "--model",
            str(files["vgg19"]),
            "--target",
            "dog",
            "--out",
            str(out),
        ]
    )
    assert code == 0
    summary = json.loads((out / "atlas.json").read_text())
    names = [layer["name"] for layer in summary["layers"]]
    assert names == [f"features.{i}" for i in (0, 2, 5, 7, 10, 12, 14, 16, 19, 21, 23, 25, 28, 30, 32, 34)]
    assert summary["layers"][0]["shape"] == [64, 64, 64]
    assert summary["layers"][-1]["shape"] == [512, 4, 4]
    assert summary["target_name"] == "dog"
    assert summary["method"] == "gradxact"
    files_written = sorted((out / "layers").glob("*.npz"))
    assert len(files_written) == 16
    assert (out / "atlas.png").stat().st_size > 10_000
    with np.load(files_written[0]) as f:
        assert f["upsampled"].shape == (64, 64)
        assert np.isfinite(f["map"]).all()


@pytest.mark.usefixtures("cached_seed_model")
def test_channels_of_the_seed_model(files: dict[str, Path], tmp_path: Path) -> None:
    out = tmp_path / "channels"
    args = ["channels", str(files["chelsea"]), "--model", str(files["vgg19"]), "--layer", "features.34"]
    assert main([*args, "--samples", "2", "--out", str(out)]) == 0
    rows = list(csv.DictReader((out / "channels.csv").open()))
    assert len(rows) == 512
    assert rows[0]["rank"] == "1"
    report = json.loads((out / "channels.json").read_text(), parse_constant=pytest.fail)  # strict JSON
    assert report["permutations"] == 2
    assert report["max_stderr"] is None  # one antithetic pair: no standard error (not Infinity)
    assert report["suffix_mode"] == "fx"
    assert report["sum_of_values"] == pytest.approx(report["full"] - report["empty"], abs=1e-6)
    assert (out / "channels.png").stat().st_size > 5_000


@pytest.mark.parametrize("method", ["ig", "gradshap", "gradcam"])
def test_layers_methods_on_a_resnet_checkpoint(files: dict[str, Path], tmp_path: Path, method: str) -> None:
    out = tmp_path / method
    extra = ["--baselines", str(files["coffee"])] if method == "gradshap" else []
    code = main(
        ["layers", str(files["chelsea"]), "--model", str(files["resnet18"]), "--method", method,
         "--steps", "4", "--samples", "4", *extra, "--out", str(out)]
    )  # fmt: skip
    assert code == 0
    summary = json.loads((out / "atlas.json").read_text())
    assert [layer["name"] for layer in summary["layers"]] == ["conv1", "layer1", "layer2", "layer3", "layer4"]


def test_layers_chosen_by_name(files: dict[str, Path], tmp_path: Path) -> None:
    out = tmp_path / "chosen"
    args = [
        "layers",
        str(files["chelsea"]),
        "--model",
        str(files["resnet18"]),
        "--layers",
        "layer4,layer1.0.conv1",
    ]
    assert main([*args, "--out", str(out)]) == 0
    names = [la["name"] for la in json.loads((out / "atlas.json").read_text())["layers"]]
    assert names == ["layer1.0.conv1", "layer4"]


def test_channels_with_a_dataset_mean_baseline(files: dict[str, Path], tmp_path: Path) -> None:
    out = tmp_path / "mean"
    args = ["channels", str(files["chelsea"]), "--model", str(files["resnet18"]), "--layer", "layer4.1.conv2"]
    mean = ["--baseline", "mean", "--mean-from", str(files["chelsea"]), str(files["coffee"])]
    assert main([*args, *mean, "--stderr", "0.05", "--out", str(out)]) == 0
    report = json.loads((out / "channels.json").read_text())
    assert report["baseline"] == "tensor"
    assert report["max_stderr"] <= 0.05


def test_errors_are_clear(files: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    model = ["--model", str(files["resnet18"]), "--out", str(tmp_path / "x")]

    def error() -> str:
        return " ".join(capsys.readouterr().err.split())  # rich wraps long lines

    assert main(["layers", str(files["broken"]), *model]) == 2
    assert "broken.jpg" in error()
    assert main(["layers", str(files["chelsea"]), *model, "--layers", "layer9"]) == 2
    assert "unknown layer 'layer9'; closest" in error()
    assert main(["channels", str(files["chelsea"]), *model, "--layer", "layer4", "--baseline", "mean"]) == 2
    assert "--mean-from" in error()
    assert main(["channels", str(files["chelsea"]), *model, "--layer", "fc"]) == 2
    assert "not a (N, C, h, w) feature map (needed by channel Shapley values)" in error()
    with pytest.raises(SystemExit):  # argparse: --samples and --stderr exclude each other
        main(["channels", str(files["chelsea"]), *model, "--samples", "4", "--stderr", "0.1"])
    assert not (tmp_path / "x").exists()


@pytest.fixture(scope="module")
def class_folders(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A class-folder dataset, images one folder deeper than the class (found recursively)."""
    data = tmp_path_factory.mktemp("mean-data")
    for cls, sample in (("cats", "chelsea"), ("cups", "coffee")):
        (data / cls / "sub").mkdir(parents=True)
        for i in range(3):
            load_sample(sample).rotate(40 * i).save(data / cls / "sub" / f"{sample}{i}.png")
    (data / "cats" / "notes.txt").write_text("not an image")
    return data


def test_channels_mean_from_a_class_folder_dataset_with_probe_patches(
    files: dict[str, Path], class_folders: Path, tmp_path: Path
) -> None:
    out = tmp_path / "folder-mean"
    args = ["channels", str(files["chelsea"]), "--model", str(files["resnet18"]), "--layer", "layer3"]
    args += ["--samples", "2", "--top", "2", "--baseline", "mean", "--mean-from", str(class_folders)]
    assert main([*args, "--mean-limit", "4", "--patches", "3", "--out", str(out)]) == 0
    report = json.loads((out / "channels.json").read_text())
    assert report["baseline"] == "tensor"
    assert report["mean_images"] == 4
    probes = [Path(p) for p in report["probe_images"]]
    assert [p.name for p in probes] == ["chelsea0.png", "chelsea1.png", "coffee0.png", "coffee1.png"]
    top = report["top_channels"]
    assert 1 <= len(top) <= 4
    assert {row["sign"] for row in top} <= {"+", "-"}
    for row in top:
        left, upper, right, lower = row["patch"]["box"]
        assert 0 <= left < right <= 64
        assert 0 <= upper < lower <= 64
        assert right - left > 8  # layer3 of a ResNet-18 sees far more than one 4 px cell
        activations = [p["activation"] for p in row["probe_patches"]]
        assert len(activations) == 3
        assert activations == sorted(activations, reverse=True)
        assert {Path(p["path"]) for p in row["probe_patches"]} <= set(probes)
    assert (out / "channels.png").stat().st_size > 5_000


def test_channels_probes_with_a_zero_baseline_and_bad_mean_sources(
    files: dict[str, Path], class_folders: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    base = ["channels", str(files["chelsea"]), "--model", str(files["resnet18"]), "--layer", "layer4"]
    out = tmp_path / "probes"
    assert main([*base, "--samples", "2", "--top", "1", "--probes", str(class_folders), "-o", str(out)]) == 0
    report = json.loads((out / "channels.json").read_text())
    assert (report["baseline"], report["mean_images"], len(report["probe_images"])) == ("zero", 0, 6)
    assert all(len(row["probe_patches"]) == 4 for row in report["top_channels"])
    empty = tmp_path / "empty"
    (empty / "cls").mkdir(parents=True)
    mean = [*base, "--baseline", "mean", "-o", str(tmp_path / "x")]
    assert main([*mean, "--mean-from", str(empty)]) == 2
    assert "no image files in this folder" in capsys.readouterr().err
    assert main([*mean, "--mean-from", str(tmp_path / "nope")]) == 2
    assert "no such file or folder" in capsys.readouterr().err
    assert main([*mean, "--mean-from", str(class_folders), "--mean-limit", "0"]) == 2
    assert "--mean-limit must be a positive integer, got 0" in capsys.readouterr().err
    assert not (tmp_path / "x").exists()


def test_probe_images_come_from_files_manifests_and_image_folders_never_their_masks(tmp_path: Path) -> None:
    from cnnlens.cli.channels import image_paths

    picture = load_sample("coffee").resize((16, 16))
    for name in ("images/a/1.png", "images/b/2.png", "masks/1.png", "loose.png"):
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        picture.save(tmp_path / name)
    (tmp_path / "m.csv").write_text("path,label\nloose.png,x\n")
    found = [tmp_path / "images/a/1.png", tmp_path / "images/b/2.png"]
    assert image_paths([str(tmp_path)], 10) == found
    assert (
        image_paths([str(tmp_path / "m.csv"), str(tmp_path / "loose.png")], 10)
        == [tmp_path / "loose.png"] * 2
    )
    assert image_paths([str(tmp_path / "loose.png"), str(tmp_path)], 2) == [tmp_path / "loose.png", found[0]]
