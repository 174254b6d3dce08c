"""Seed 000's study end to end through the real commands, and the same study on efficientnet_lite0.

Seed 000 trains a VGG19 backbone with the head Flatten -> Dense 64 -> ReLU -> Dropout -> Dense 2, then
explains it by its feature layers (the layer atlas) and by the channels of a layer (channel Shapley
values). Here: ``cnnlens data synth`` -> ``cnnlens train --model vgg19 --head mlp64`` (random weights,
32 px, one epoch) -> ``cnnlens layers`` and ``cnnlens channels`` with ``--model RUN``. Offline, the same
study runs on the pretrained efficientnet_lite0.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from cnnlens.cli import main
from cnnlens.data import load_sample
from cnnlens.models import LoadedModel
from cnnlens.probing.atlas import layer_atlas
from cnnlens.probing.channels import channel_shapley

pytestmark = pytest.mark.slow  # full commands, and the pretrained efficientnet_lite0

VGG19_CONVS = [f"features.{i}" for i in (0, 2, 5, 7, 10, 12, 14, 16, 19, 21, 23, 25, 28, 30, 32, 34)]


def strict_json(path: Path) -> dict[str, object]:
    def refuse(constant: str) -> None:
        raise AssertionError(f"{path} holds {constant}, which is not JSON")

    body: dict[str, object] = json.loads(path.read_text(), parse_constant=refuse)
    return body


def test_seed_000_study_train_vgg19_mlp64_then_layers_and_channels(tmp_path: Path) -> None:
    data = tmp_path / "shapes"
    synth = ["data", "synth", "--out", str(data), "--classes", "2", "--per-class", "10", "--size", "32"]
    assert main(synth) == 0
    run = tmp_path / "run"
    train = ["train", str(data / "manifest.csv"), "--model", "vgg19", "--head", "mlp64", "--no-pretrained"]
    train += ["--epochs", "1", "--image-size", "32", "--batch-size", "8", "--out", str(run)]
    assert main(train) == 0
    config = json.loads((run / "config.json").read_text())
    assert (config["model"], config["head"], config["freeze"]) == ("vgg19", "mlp64", "features")
    image = next((data / "images").rglob("*.png"))

    atlas_out = tmp_path / "atlas"
    assert main(["layers", str(image), "--model", str(run), "--out", str(atlas_out)]) == 0
    atlas = strict_json(atlas_out / "atlas.json")
    layers = atlas["layers"]
    assert isinstance(layers, list)
    assert [layer["name"] for layer in layers] == VGG19_CONVS  # every conv layer, in network order
    assert layers[0]["shape"] == [64, 32, 32]
    assert layers[-1]["shape"] == [512, 2, 2]
    assert atlas["target_name"] in ("circle", "triangle")
    assert len(list((atlas_out / "layers").glob("*.npz"))) == 16

    channels_out = tmp_path / "channels"
    argv = ["channels", str(image), "--model", str(run), "--layer", "features.34", "--samples", "4"]
    argv += ["--baseline", "mean", "--mean-from", str(data / "images"), "--mean-limit", "6", "--top", "2"]
    assert main([*argv, "--out", str(channels_out)]) == 0
    report = strict_json(channels_out / "channels.json")
    assert report["channels"] and len(report["channels"]) == 512  # type: ignore[arg-type]
    assert report["suffix_mode"] == "fx"
    assert report["mean_images"] == 6
    assert report["sum_of_values"] == pytest.approx(
        float(report["full"]) - float(report["empty"]),  # type: ignore[arg-type]
        abs=1e-5,
    )
    top = report["top_channels"]
    assert isinstance(top, list) and top
    assert all(len(row["probe_patches"]) == 4 for row in top)
    assert (channels_out / "channels.png").is_file()


def test_seed_000_study_on_efficientnet_lite0(lite0: LoadedModel) -> None:
    x = lite0.prepare(load_sample("chelsea"))
    atlas = layer_atlas(lite0, x, method="gradxact")
    assert atlas.names() == ["conv_stem", *[f"blocks.{i}" for i in range(7)], "conv_head"]
    assert "cat" in atlas.target_name
    assert all(torch.isfinite(layer.upsampled).all() for layer in atlas.layers)
    assert atlas["conv_head"].shape == (1280, 7, 7)

    result = channel_shapley(lite0, x, layer="conv_head", samples=4, seed=0)
    assert result.suffix_mode == "fx"  # only the network after conv_head is re-run
    assert result.method == "permutation"
    assert result.permutations == 4
    assert result.values.shape == (1280,)
    assert float(result.values.sum()) == pytest.approx(result.full - result.empty, abs=1e-4)
    assert result.full == pytest.approx(float(lite0.logits(x)[0, result.target]), abs=1e-3)
    assert result.evaluations == 2 + 4 * 1279
