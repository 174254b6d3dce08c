"""Network dissection against planted truths: units wired to one colour detect that colour's
concept with IoU near 1; the quantile sketch against the exact quantile."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from cnnlens.data.concepts import COLOURS, ConceptConfig, generate_concepts, label_concepts, read_concepts
from cnnlens.data.folders import read_data
from cnnlens.errors import InputError, UnknownNameError
from cnnlens.probing.dissection import UnitHistogram, dissect
from tests.probing.unit_toys import TOY_PREPROCESSING, ColourUnits


@pytest.fixture(scope="module")
def concept_set(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("concepts") / "set"
    generate_concepts(root, ConceptConfig(per_class=10, size=32, seed=1))
    return root


def test_concept_masks_are_exact(concept_set: Path) -> None:
    data = read_data(concept_set / "images")
    concepts = read_concepts(concept_set / "concepts", data.samples)
    assert set(concepts.names) >= {"red", "circle", "stripes"}
    assert concepts.kinds is not None and concepts.kinds["red"] == "colour"
    for sample, files in zip(data.samples, concepts.files, strict=True):
        image = np.asarray(Image.open(sample.path)).astype(float) / 255
        shape = np.asarray(Image.open(files[concepts.names.index(sample.path.parent.name)])) > 0
        colours = [concepts.names[k] for k in files if concepts.names[k] in COLOURS]
        assert len(colours) == 1
        colour = np.asarray(Image.open(files[concepts.names.index(colours[0])])) > 0
        assert (colour == shape).all()  # the one object has one shape and one colour
        expected = np.asarray(COLOURS[colours[0]])
        assert (
            np.abs(image[shape] / image[shape].max(1, keepdims=True) - expected / expected.max()).max() < 0.05
        )


def red_fraction(root: Path, samples: list) -> float:
    total = on = 0
    for s in samples:
        path = root / "concepts" / "red" / s.path.name
        total += 32 * 32
        on += int((np.asarray(Image.open(path)) > 0).sum()) if path.exists() else 0
    return on / total


def test_colour_units_detect_their_colour(concept_set: Path) -> None:
    data = read_data(concept_set / "images")
    concepts = read_concepts(concept_set / "concepts", data.samples)
    q = red_fraction(concept_set, data.samples)
    seen: list[int] = []
    result = dissect(
        ColourUnits(),
        data.samples,
        concepts,
        "units",
        preprocessing=TOY_PREPROCESSING,
        quantile=q,
        batch_size=16,
        workers=0,
        progress=lambda _what, n: seen.append(n),
    )
    red, green = concepts.names.index("red"), concepts.names.index("green")
    assert sum(seen) == 2 * len(data.samples)  # two passes
    assert result.iou[0, red] > 0.9
    assert int(result.best[0]) == red and bool(result.detectors[0])
    assert int(result.best[1]) == green and result.iou[1, green] > result.iou[1, red] + 0.3
    assert int(result.best[2]) == concepts.names.index("blue")
    assert not bool(result.detectors[3])  # a dead unit detects nothing
    assert result.iou[0].sort(descending=True).values[1] < 0.5  # red, not its shapes, is the match
    assert result.summary() == "3/4 units with IoU > 0.04"
    assert result.histogram() == {"blue": 1, "green": 1, "red": 1}


def test_label_concepts_from_manifest_masks(concept_set: Path) -> None:
    data = read_data(concept_set / "manifest.csv")
    concepts = label_concepts(data)
    assert concepts.names == data.class_names
    assert all(list(f) == [s.label] for f, s in zip(concepts.files, data.samples, strict=True))


def test_histogram_quantile_matches_exact_quantile_within_a_bin() -> None:
    g = torch.Generator().manual_seed(0)
    hist = UnitHistogram(3, bins=512)
    chunks = []
    for scale in (0.1, 1.0, 20.0, 0.5):  # the range has to grow upwards and downwards
        v = torch.randn(3, 4000, generator=g) * scale + torch.tensor([[0.0], [5.0], [-3.0]])
        hist.add(v)
        chunks.append(v)
    values = torch.cat(chunks, 1).double()
    for q in (0.005, 0.1, 0.5):
        t = hist.top_quantile(q)
        exact = torch.quantile(values, 1 - q, dim=1)
        assert ((t - exact).abs() <= hist.width).all()
        fullest_bin = hist.counts.max(1).values / values.shape[1]  # the rank is exact up to one bin
        assert (((values > t[:, None]).double().mean(1) - q).abs() <= fullest_bin).all()
    assert hist.counts.sum() == values.numel()


def test_bad_inputs_are_one_line_errors(concept_set: Path, tmp_path: Path) -> None:
    data = read_data(concept_set / "images")
    concepts = read_concepts(concept_set / "concepts", data.samples)
    run = dict(preprocessing=TOY_PREPROCESSING, workers=0)
    for q in (0.0, 1.0, 1.5):
        with pytest.raises(InputError, match="quantile"):
            dissect(ColourUnits(), data.samples, concepts, "units", quantile=q, **run)
    with pytest.raises(UnknownNameError):
        dissect(ColourUnits(), data.samples, concepts, "unitz", **run)
    with pytest.raises(InputError, match="feature map"):
        dissect(ColourUnits(), data.samples, concepts, "fc", **run)
    with pytest.raises(InputError, match="no concept subfolder"):
        read_concepts(tmp_path, data.samples)
    with pytest.raises(InputError, match="no concepts"):
        label_concepts(read_data(concept_set / "images"))
    bad = tmp_path / "bad" / "red"
    bad.mkdir(parents=True)
    Image.fromarray(np.zeros((8, 8), np.uint8)).save(bad / data.samples[0].path.name)
    wrong = read_concepts(tmp_path / "bad", data.samples)
    with pytest.raises(InputError, match="must have its image's size"):
        dissect(ColourUnits(), data.samples, wrong, "units", **run)
