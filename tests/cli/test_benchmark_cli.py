"""``cnnlens benchmark`` on data made by ``cnnlens data synth``: folders, manifests and ``--split``."""

from __future__ import annotations

import csv
import json
from pathlib import Path
from typing import Any

import pytest

from cnnlens.cli import main
from tests.conftest import tiny_loaded

pytestmark = pytest.mark.slow  # every test runs `cnnlens data synth` and `cnnlens benchmark`


@pytest.fixture
def synth(tmp_path: Path) -> Path:
    root = tmp_path / "synth"
    args = ["data", "synth", "--out", str(root), "--classes", "2", "--per-class", "3", "--size", "32"]
    assert main(args) == 0
    return root


@pytest.fixture(autouse=True)
def tiny_cli(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("cnnlens.cli.benchmark.model_from_args", lambda args: tiny_loaded())


def benchmark(data: Path, out: Path, *extra: str) -> dict[str, Any]:
    args = ["benchmark", "--data", str(data), "--methods", "saliency", "--no-references", "--out", str(out)]
    assert main([*args, *extra]) == 0
    return dict(json.loads((out / "benchmark.json").read_text()))


def test_a_synthetic_folder_is_benchmarked_with_its_masks(synth: Path, tmp_path: Path) -> None:
    summary = benchmark(synth, tmp_path / "out", "--metrics", "pointing_game")
    assert len(summary["images"]) == 6
    assert summary["table"][0]["metrics"]["pointing_game"]["n"] == 6  # every image has its mask


@pytest.mark.parametrize("data", ["manifest.csv", "."])
def test_split_keeps_the_manifests_test_rows(synth: Path, tmp_path: Path, data: str) -> None:
    with open(synth / "manifest.csv", newline="") as f:
        test = sorted(Path(r["path"]).stem for r in csv.DictReader(f) if r["split"] == "test")
    summary = benchmark(synth / data, tmp_path / "out", "--metrics", "pointing_game", "--split", "test")
    assert sorted(i["stem"] for i in summary["images"]) == test
    assert summary["table"][0]["metrics"]["pointing_game"]["n"] == len(test)


def test_split_without_a_manifest_is_a_clear_error(
    synth: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (synth / "manifest.csv").unlink()
    args = ["benchmark", "--data", str(synth), "--split", "test", "--out", str(tmp_path / "out")]
    assert main(args) == 2
    assert "manifest" in capsys.readouterr().err


def test_naming_the_ssim_column_selects_the_randomisation_metric(synth: Path, tmp_path: Path) -> None:
    extra = ("--metrics", "randomisation_ssim", "--metric-param", "stages=2", "--split", "test")
    summary = benchmark(synth, tmp_path / "out", *extra)
    assert [m["name"] for m in summary["metrics"]] == ["randomisation", "randomisation_ssim"]
    cell = summary["table"][0]["metrics"]["randomisation_ssim"]
    assert cell["n"] >= 1 and 0 <= cell["mean"] < 0.9
