"""What the commands write into --out: a file given as --out, and summary.json across re-runs."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from cnnlens.cli import main
from cnnlens.models.checkpoint import save_checkpoint
from cnnlens.models.registry import load_model


@pytest.fixture(scope="module")
def model_and_images(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list[Path]]:
    root = tmp_path_factory.mktemp("outputs")
    ckpt = save_checkpoint(load_model("tinycnn", pretrained=False), root / "tiny.pt")
    rng = np.random.default_rng(0)
    images = []
    for name in ("cat", "dog"):
        path = root / f"{name}.png"
        Image.fromarray(rng.integers(0, 255, (40, 40, 3), dtype=np.uint8)).save(path)
        images.append(path)
    return ckpt, images


def explain(model: Path, image: Path | str, out: Path) -> int:
    return main(["explain", str(image), "--model", str(model), "-m", "saliency", "--out", str(out)])


def stems(out: Path) -> list[str]:
    return [e["stem"] for e in json.loads((out / "summary.json").read_text())["images"]]


def test_reruns_merge_summary_and_a_run_that_reads_nothing_keeps_it(
    model_and_images: tuple[Path, list[Path]], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    model, (cat, dog) = model_and_images
    out = tmp_path / "out"
    assert explain(model, cat, out) == 0
    assert explain(model, dog, out) == 0
    assert stems(out) == ["cat", "dog"]  # the second run keeps the first one's entry
    before = (out / "summary.json").read_text()
    assert explain(model, tmp_path / "mistyped.png", out) == 2
    assert "no image could be read" in capsys.readouterr().err
    assert (out / "summary.json").read_text() == before
    assert explain(model, cat, out) == 0
    assert sorted(stems(out)) == ["cat", "dog"]


@pytest.mark.parametrize("command", ["explain", "train", "demo"])
def test_a_file_given_as_out_is_one_line(
    command: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    afile = tmp_path / "afile"
    afile.write_text("mine")
    argv = {
        "explain": ["explain", str(afile), "--out", str(afile)],
        "train": ["train", str(tmp_path), "--model", "tinycnn", "--out", str(afile)],
        "demo": ["demo", "--out", str(afile)],
    }[command]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert "is a file, not a folder" in err and "Traceback" not in err
    assert afile.read_text() == "mine"
