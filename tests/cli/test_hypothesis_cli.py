"""``cnnlens hypothesis``: the commands write PNG + JSON + one page; bad inputs are one line."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from cnnlens.cli import main
from cnnlens.data.samples import load_sample

TINY = ["--model", "tinycnn"]


@pytest.fixture(scope="module")
def photo(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """A 48x40 photo of a dark disk on a light background, and its mask."""
    folder = tmp_path_factory.mktemp("hyp")
    yy, xx = np.mgrid[:40, :48]
    mask = (yy - 20) ** 2 + (xx - 24) ** 2 <= 12**2
    rng = np.random.default_rng(0)
    img = np.where(mask[..., None], rng.integers(0, 90, (40, 48, 3)), 220).astype(np.uint8)
    Image.fromarray(img).save(folder / "disk.png")
    Image.fromarray(mask.astype(np.uint8) * 255).save(folder / "mask.png")
    return folder / "disk.png", folder / "mask.png"


def one_line_error(args: list[str], capsys: pytest.CaptureFixture[str]) -> str:
    code = main(args)
    err = capsys.readouterr().err
    assert code == 2, err
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: ") and "Traceback" not in err, err
    return lines[0]


@pytest.mark.slow
def test_all_writes_four_sections(
    photo: tuple[Path, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    image, mask = photo
    out = tmp_path / "out"
    args = ["hypothesis", "all", str(image), "--mask", str(mask), *TINY, "--n", "3", "--grid", "2"]
    assert main([*args, "--texture", "brick", "-o", str(out)]) == 0
    printed = capsys.readouterr().out
    assert printed.count("verdict:") == 4 and printed.count("before:") == 4
    page = (out / "index.html").read_text()
    for key in ("parts", "shuffle", "shape", "texture"):
        result = json.loads((out / key / "result.json").read_text())
        assert result["verdict"] and result["verdict"][:20] in page
        assert (out / key / "variants.png").stat().st_size > 1000
        assert len(result["before"]) == 5
    shuffle = json.loads((out / "shuffle" / "result.json").read_text())
    assert len(shuffle["variants"]) == 3 * 3  # --n 3 for each of 2,3,4
    parts = json.loads((out / "parts" / "result.json").read_text())
    assert parts["summary"]["parts"] == 4  # the 2x2 cells all overlap the disk


def test_parts_from_boxes_and_a_label_mask(
    photo: tuple[Path, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    image, _ = photo
    labels = np.zeros((40, 48, 3), np.uint8)
    labels[:20, :24], labels[20:, 24:] = 50, 120
    Image.fromarray(labels).save(tmp_path / "labels.png")
    out = tmp_path / "out"
    assert (
        main(
            ["hypothesis", "parts", str(image), "--mask", str(tmp_path / "labels.png"), *TINY, "-o", str(out)]
        )
        == 0
    )
    assert json.loads((out / "parts" / "result.json").read_text())["summary"]["parts"] == 2
    boxes = ["--boxes", "0,0,20,20", "--boxes", "20,10,40,30", "--view", "crop"]
    assert main(["hypothesis", "parts", str(image), *boxes, "--fill", "noise", *TINY, "-o", str(out)]) == 0
    assert json.loads((out / "parts" / "result.json").read_text())["summary"]["parts"] == 2


def test_superpixels_keep_one_and_bbox(photo: tuple[Path, Path], tmp_path: Path) -> None:
    image, mask = photo
    out = tmp_path / "out"
    sp = ["hypothesis", "parts", str(image), "--mask", str(mask), "--superpixels", "40", "--keep-one"]
    assert main([*sp, *TINY, "-o", str(out)]) == 0
    parts = json.loads((out / "parts" / "result.json").read_text())
    count = parts["summary"]["parts"]
    assert count >= 2 and len(parts["variants"]) == 2 * count
    box = ["hypothesis", "shuffle", str(image), "--mask", str(mask), "--bbox", "--grid", "2", "--n", "2"]
    assert main([*box, *TINY, "-o", str(out)]) == 0
    shuffle = json.loads((out / "shuffle" / "result.json").read_text())
    assert shuffle["summary"]["box"] is not None
    page = (out / "index.html").read_text()
    assert parts["verdict"][:30] in page and shuffle["verdict"][:30] in page  # one page, two sections


@pytest.mark.parametrize(
    ("extra", "expected"),
    [
        (["parts", "--grid", "1"], "--grid must be at least 2"),
        (["parts", "--grid", "0"], "--grid must be at least 2"),
        (["shuffle", "--grid", "1,2"], "at least 2"),
        (["shuffle", "--n", "0"], "--n must be"),
        (["shuffle", "--bbox"], "give --mask"),
        (["texture", "--mask", "MASK", "--texture", "no-such-texture.png"], "no-such-texture.png"),
        (["shape", "--mask", "WRONG"], "the mask must be drawn on the same image"),
        (["shape", "--mask", "EMPTY"], "empty"),
        (["shape", "--mask", "sample:nobody"], "unknown sample mask"),
    ],
)
def test_bad_inputs_are_one_line(
    extra: list[str],
    expected: str,
    photo: tuple[Path, Path],
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    image, mask = photo
    Image.new("L", (10, 10), 255).save(tmp_path / "wrong.png")
    Image.new("L", (48, 40), 0).save(tmp_path / "empty.png")
    names = {"MASK": str(mask), "WRONG": str(tmp_path / "wrong.png"), "EMPTY": str(tmp_path / "empty.png")}
    extra = [names.get(a, a) for a in extra]
    out = tmp_path / "out"
    line = one_line_error(["hypothesis", extra[0], str(image), *extra[1:], *TINY, "-o", str(out)], capsys)
    assert expected in line
    assert not out.exists()  # nothing written


def test_shape_bias_bad_n(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert "--n" in one_line_error(
        ["hypothesis", "shape-bias", "--n", "0", *TINY, "-o", str(tmp_path / "o")], capsys
    )
    line = one_line_error(
        ["hypothesis", "shape-bias", "--textures", "lava", *TINY, "-o", str(tmp_path / "o")], capsys
    )
    assert "lava" in line


def test_shape_bias_command(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "out"
    args = ["hypothesis", "shape-bias", "--n", "6", "--sources", "synth", "--textures", "brick,coffee"]
    assert main([*args, *TINY, "-o", str(out)]) == 0
    result = json.loads((out / "shape-bias" / "result.json").read_text())
    assert len(result["items"]) == 6 and result["verdict"] in (out / "index.html").read_text()
    assert "verdict:" in capsys.readouterr().out


@pytest.mark.slow
def test_chelsea_with_the_default_model(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """Seed 001 on chelsea: the default model's top-1 is a cat; only the silhouette loses the cat."""
    image = tmp_path / "chelsea.png"
    load_sample("chelsea").save(image)
    out = tmp_path / "out"
    assert main(["hypothesis", "shape", str(image), "--mask", "sample:chelsea", "-o", str(out)]) == 0
    result = json.loads((out / "shape" / "result.json").read_text())
    assert result["target"]["name"] in ("tiger cat", "tabby", "Egyptian cat")
    by_group = {v["group"]: v for v in result["variants"]}
    assert not by_group["silhouette"]["target_top1"] and by_group["neutral background"]["target_top1"]
    assert "not enough" in capsys.readouterr().out
