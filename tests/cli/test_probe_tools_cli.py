"""``cnnlens probe filters|activations|patches|neighbors|embed`` run for real on a small dataset, write
their files and their sections of one page, and answer bad input with one line and exit 2."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from cnnlens.cli import main

MODEL = ["--model", "tinycnn", "--no-pretrained"]


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Three classes of 24 px pictures (red, green, blue blobs on noise), 8 each."""
    root = tmp_path_factory.mktemp("probe-data")
    rng = np.random.default_rng(0)
    for c, name in enumerate(("red", "green", "blue")):
        (root / name).mkdir()
        for i in range(8):
            a = rng.integers(0, 60, size=(24, 24, 3), dtype=np.uint8)
            r, q = rng.integers(4, 20, size=2)
            a[r - 3 : r + 3, q - 3 : q + 3, c] = 255
            Image.fromarray(a).save(root / name / f"{name}_{i}.png")
    return root


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str]:
    code = main(["probe", *argv])
    out = capsys.readouterr()
    return code, out.out + out.err


@pytest.mark.slow
def test_every_tool_adds_its_section_to_one_page(
    data: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = str(tmp_path / "out")
    query = str(data / "red" / "red_0.png")
    assert run(capsys, "filters", *MODEL, "-o", out)[0] == 0
    assert (
        run(
            capsys, "activations", query, *MODEL, "--layers", "features.0,features.2", "--top", "4", "-o", out
        )[0]
        == 0
    )
    code, text = run(
        capsys,
        "patches",
        str(data),
        *MODEL,
        "--layer",
        "features.1",
        "--top",
        "3",
        "--units",
        "0-3",
        "-o",
        out,
    )
    assert code == 0 and "24 images, 4 units tracked" in text
    code, text = run(
        capsys,
        "neighbors",
        str(data),
        *MODEL,
        "--query",
        query,
        "--layer",
        "features.2",
        "--k",
        "3",
        "-o",
        out,
    )
    assert code == 0
    code, text = run(
        capsys, "embed", str(data), *MODEL, "--layer", "features.2", "--method", "pca", "-o", out
    )
    assert code == 0 and "k-NN accuracy" in text
    root = Path(out)
    page = (root / "index.html").read_text()
    for key in ("filters", "activations", "patches", "neighbors", "embed"):
        assert f'<section id="{key}">' in page
        assert (root / key / f"{key}.png").is_file() and (root / key / f"{key}.json").is_file()
    assert "<svg" in page and page.count("data-i=") == 24 and "http" not in page.split("<body>")[1]
    patches = json.loads((root / "patches" / "patches.json").read_text())
    assert [u["channel"] for u in patches["units"]] == [0, 1, 2, 3]
    assert all(len(u["patches"]) == 3 for u in patches["units"])
    near = json.loads((root / "neighbors" / "neighbors.json").read_text())
    assert near["feature"][0]["file"] == "red/red_0.png" and near["feature"][0]["score"] == pytest.approx(
        1, abs=1e-4
    )
    assert near["pixel"][0]["file"] == "red/red_0.png"
    embed = json.loads((root / "embed" / "embed.json").read_text())
    assert embed["images"] == 24 and len(embed["confusable_pairs"]) == 3


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["patches", "DATA", "--layer", "nope"], "nope"),
        (["patches", "DATA", "--layer", "features.1", "--units", "40"], "units [40] are not in layer"),
        (["patches", "DATA", "--layer", "features.1", "--top", "0"], "--top must be"),
        (["neighbors", "DATA", "--query", "QUERY", "--layer", "features.2", "--k", "0"], "--k must be"),
        (["embed", "EMPTY", "--layer", "features.2"], "EMPTY"),
        (["filters", "--layer", "features.1.0"], "not images"),
        (["activations", "QUERY", "--layers", "features.9"], "features.9"),
    ],
)
def test_bad_input_is_one_line_and_exit_2(
    argv: list[str], message: str, data: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    empty = tmp_path / "empty"
    (empty / "a").mkdir(parents=True)
    names = {"DATA": str(data), "EMPTY": str(empty), "QUERY": str(data / "red" / "red_0.png")}
    argv = [names.get(a, a) for a in argv]
    out = tmp_path / "out"
    code, text = run(capsys, *argv, *MODEL, "-o", str(out))
    assert code == 2
    lines = [line for line in text.strip().splitlines() if line.strip()]
    assert (
        len(lines) == 1 and "error:" in lines[0] and message.replace("EMPTY", str(empty)) in " ".join(lines)
    )
    assert not (out / "index.html").exists()
