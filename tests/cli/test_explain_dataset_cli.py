"""``cnnlens explain-dataset`` through the command line: the store, its summary and the page section
with the per-class mean maps; bad input is one line with exit 2; a missing Ray is one clear line."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pandas as pd
import pytest
import torch
from PIL import Image

from cnnlens.cli import main
from cnnlens.data.synthetic import SynthConfig, generate
from cnnlens.dataset_explain.ray_engine import EngineUnavailableError, import_ray
from cnnlens.models import load_model


@pytest.fixture
def dataset(tmp_path: Path) -> tuple[Path, Path]:
    data = generate(tmp_path / "shapes", SynthConfig(classes=2, per_class=3, size=32)).parent
    torch.manual_seed(0)
    weights = tmp_path / "tiny.pt"
    torch.save(load_model("tinycnn", pretrained=False).module.state_dict(), weights)
    return data / "manifest.csv", weights


@pytest.mark.slow  # a full command, twice
def test_explain_dataset_writes_store_summary_and_page(
    tmp_path: Path, dataset: tuple[Path, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    manifest, weights = dataset
    store = tmp_path / "store"
    args = ["explain-dataset", str(manifest), "--model", "tinycnn", "--weights", str(weights)]
    args += ["-m", "gradcam,saliency", "--batch-size", "4", "--dtype", "float32", "-o", str(store)]
    assert main(args) == 0
    summary = json.loads((store / "summary.json").read_text())
    assert summary["complete"] and summary["explained"] == 6 and summary["dtype"] == "float32"
    assert [r["images"] for r in summary["class_summary"]] == [3, 3]
    table = pd.read_parquet(store / "table.parquet")
    assert table["has_mask"].all() and table["gradcam_energy_in_mask"].between(0, 1).all()
    png = store / "explain-dataset" / "class_means.png"
    assert Image.open(png).size[0] > 100
    page = (store / "index.html").read_text()
    assert "Explanations over the dataset" in page and "data:image/png;base64" in page
    assert "circle" in page and "triangle" in page
    assert "6 of 6 images explained" in capsys.readouterr().out
    assert main(args) == 0  # a finished store: rerunning the same command changes nothing
    assert pd.read_parquet(store / "table.parquet").equals(table)


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--batch-size", "0"], "--batch-size"),
        (["--target", "zebra"], "zebra"),
        (["--target", "true"], "--target true"),  # tinycnn's classes are not circle/triangle
        (["-p", "windw=8"], "windw"),
    ],
)
def test_bad_input_is_one_line_and_exit_2(
    tmp_path: Path,
    dataset: tuple[Path, Path],
    capsys: pytest.CaptureFixture[str],
    extra: list[str],
    message: str,
) -> None:
    manifest, weights = dataset
    store = tmp_path / "store"
    args = ["explain-dataset", str(manifest), "--model", "tinycnn", "--weights", str(weights)]
    assert main([*args, "-m", "saliency", "-o", str(store), *extra]) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and err.startswith("error:") and len(err.splitlines()) <= 2
    assert not store.exists() or not any(store.iterdir())


def test_missing_ray_is_one_clear_line(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "ray", None)  # import ray raises ImportError
    with pytest.raises(EngineUnavailableError, match=r"pip install 'cnnlens\[ray\]'"):
        import_ray()
