"""``cnnlens experiment layer-study`` end to end on tinycnn and a small synthetic two-class set: the
tables agree with the per-image sums they come from, the page gets its section, a reused run gives
the same numbers, and a run trained with other settings is not silently reused."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from cnnlens.cli import main
from cnnlens.data.synthetic import SynthConfig, generate

pytestmark = pytest.mark.slow

STUDY = [
    "experiment",
    "layer-study",
    "--backbone",
    "tinycnn",
    "--no-pretrained",
    "--epochs",
    "1",
    "--split",
    "0.5,0.2,0.3",
    "-p",
    "n_samples=4",
    "--resamples",
    "300",
]


def test_layer_study_end_to_end(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    data = generate(tmp_path / "shapes", SynthConfig(classes=2, per_class=10, size=32)).parent / "images"
    out = tmp_path / "study"
    assert main([*STUDY, str(data), "-o", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "share of attribution per block" in printed and "features.0" in printed

    folder = out / "layer_study"
    shares = pd.read_csv(folder / "shares.csv")
    images = pd.read_csv(folder / "images.csv")
    result = json.loads((folder / "shares.json").read_text())
    test_split = json.loads((out / "run" / "split.json").read_text())["test"]
    assert len(images) == len(test_split) == result["images"] == 6
    blocks = result["blocks"]
    assert blocks == ["features.0", "features.1", "features.2"]  # tinycnn's convolutions, in order
    # each share is the mean over the class's images of the block's part of the image's |sum|
    absolute = images[[f"abs_{b}" for b in blocks]].to_numpy()
    per_image = absolute / absolute.sum(axis=1, keepdims=True)
    for row in shares.itertuples():
        chosen = np.ones(len(images), bool) if row[1] == "all" else (images["target"] == row[1]).to_numpy()
        assert row.images == chosen.sum()
        assert row.share == pytest.approx(per_image[chosen, row.block_index].mean(), rel=1e-9)
        assert row.ci_low <= row.share <= row.ci_high
        assert row.mean_abs == pytest.approx(absolute[chosen, row.block_index].mean(), rel=1e-9)
    for _, group in shares.groupby("class"):
        assert group["share"].sum() == pytest.approx(1.0)
    assert set(shares["class"]) == {*images["target"], "all"}
    assert (folder / "blocks.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "Layer study" in (out / "index.html").read_text()

    # the same run reused with --model: the same numbers
    again = tmp_path / "again"
    assert main([*STUDY, str(data), "--model", str(out / "run"), "-o", str(again)]) == 0
    assert (again / "layer_study" / "shares.csv").read_text() == (folder / "shares.csv").read_text()
    assert not (again / "run").exists()

    # the same command into the same folder reuses the finished run; other settings are refused
    best = (out / "run" / "best.pt").stat().st_mtime_ns
    assert main([*STUDY, str(data), "-o", str(out)]) == 0
    assert (out / "run" / "best.pt").stat().st_mtime_ns == best
    capsys.readouterr()
    other = list(STUDY)
    other[STUDY.index("--epochs") + 1] = "2"
    assert main([*other, str(data), "-o", str(out)]) == 2
    assert "trained with other settings (epochs)" in capsys.readouterr().err
