"""``cnnlens probe dissect|visualize|deconv`` and ``cnnlens data concepts`` run for real (tinycnn,
32 px concept set): files, one page with the three sections, and one-line errors."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from cnnlens.cli import main


@pytest.fixture(scope="module")
def concepts(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("probe") / "concepts"
    assert main(["data", "concepts", "-o", str(root), "--per-class", "4", "--size", "32"]) == 0
    return root


def one_line_error(args: list[str], capsys: pytest.CaptureFixture[str]) -> str:
    assert main(args) == 2
    err = capsys.readouterr().err.strip()
    assert err and "\n" not in err and "Traceback" not in err
    return err


@pytest.mark.slow
def test_three_tools_fill_one_page(concepts: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    model = ["--model", "tinycnn"]
    dissect = ["probe", "dissect", str(concepts / "images"), "--concepts", str(concepts / "concepts")]
    assert main([*dissect, *model, "--layer", "features.0", "--batch-size", "8", "-o", str(out)]) == 0
    result = json.loads((out / "dissect" / "dissect.json").read_text())
    assert (
        result["units"] == 16 and result["images"] == 16 and len(result["iou"][0]) == len(result["concepts"])
    )
    assert result["summary"] == f"{result['detectors']}/16 units with IoU > 0.04"
    visualize = ["probe", "visualize", *model, "--layer", "features.1", "--unit", "0,2", "--steps", "3"]
    assert main([*visualize, "--size", "24", "-o", str(out)]) == 0
    runs = json.loads((out / "visualize" / "visualize.json").read_text())["results"]
    assert [r["objective"] for r in runs] == ["features.1 unit 0", "features.1 unit 2"]
    assert Image.open(out / "visualize" / runs[0]["file"]).size == (24, 24)
    image = next((concepts / "images" / "cross").iterdir())
    assert (
        main(["probe", "deconv", str(image), *model, "--layer", "features.2", "--unit", "1", "-o", str(out)])
        == 0
    )
    proj = json.loads((out / "deconv" / "deconv.json").read_text())["projections"][0]
    assert proj["unit"] == 1 and len(proj["box"]) == 4
    page = (out / "index.html").read_text()
    assert all(f'id="{key}"' in page or key in page for key in ("dissect", "visualize", "deconv"))
    assert page.count("data:image/png;base64") >= 3


def test_bad_inputs_are_one_line(concepts: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "out"
    data, masks = str(concepts / "images"), str(concepts / "concepts")
    base = ["probe", "dissect", data, "--model", "tinycnn", "-o", str(out)]
    assert "quantile" in one_line_error(
        [*base, "--concepts", masks, "--layer", "features.0", "--quantile", "1.5"], capsys
    )
    assert "features.9" in one_line_error([*base, "--concepts", masks, "--layer", "features.9"], capsys)
    assert "no concepts" in one_line_error([*base, "--layer", "features.0"], capsys)
    bad = tmp_path / "bad" / "red"
    bad.mkdir(parents=True)
    stem = next((concepts / "images" / "cross").iterdir()).name
    Image.fromarray(np.zeros((5, 5), np.uint8)).save(bad / stem)
    line = one_line_error([*base, "--concepts", str(tmp_path / "bad"), "--layer", "features.0"], capsys)
    assert "must have its image's size" in line
    vis = ["probe", "visualize", "--model", "tinycnn", "-o", str(out), "--steps", "1"]
    assert "out of range" in one_line_error([*vis, "--layer", "features.1", "--unit", "32"], capsys)
    assert "feature map" in one_line_error([*vis, "--layer", "classifier", "--unit", "0"], capsys)
    image = str(next((concepts / "images" / "cross").iterdir()))
    deconv = ["probe", "deconv", image, "--model", "tinycnn", "-o", str(out), "--layer", "features.2"]
    assert "out of range" in one_line_error([*deconv, "--unit", "64"], capsys)
    assert not out.exists()  # nothing written by a refused command
