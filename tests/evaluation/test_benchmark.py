"""``cnnlens benchmark`` end to end on the tiny CNN: outputs, attribution cache, resume."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from cnnlens.attribution import Attribution
from cnnlens.cli import main
from cnnlens.evaluation.benchmark import load_dataset, mean_ci, reference_map
from cnnlens.evaluation.faithfulness import Deletion
from tests.conftest import tiny_loaded

SMALL = ["--metric-param", "steps=4", "--metric-param", "stages=2", "--metric-param", "n_samples=2"]


@pytest.fixture
def data(tmp_path: Path) -> Path:
    root = tmp_path / "data"
    (root / "images").mkdir(parents=True)
    (root / "masks").mkdir()
    rng = np.random.default_rng(0)
    for name in ("a", "b"):
        Image.fromarray(rng.integers(0, 255, (32, 32, 3), dtype=np.uint8)).save(
            root / "images" / f"{name}.png"
        )
        mask = np.zeros((32, 32), np.uint8)
        mask[8:20, 10:24] = 255
        Image.fromarray(mask).save(root / "masks" / f"{name}.png")
    return root


@pytest.fixture
def tiny_cli(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("cnnlens.cli.benchmark.model_from_args", lambda args: tiny_loaded())


@pytest.fixture
def explain_calls(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    calls: list[str] = []
    original = Attribution.explain

    def counting(self: Attribution, *args, **kwargs):  # type: ignore[no-untyped-def]
        calls.append(self.name)
        return original(self, *args, **kwargs)

    monkeypatch.setattr(Attribution, "explain", counting)
    return calls


def bench(data: Path, out: Path, metrics: str, *extra: str) -> int:
    args = ["--data", str(data), "--methods", "saliency,gradcam", "--metrics", metrics, "--out", str(out)]
    return main(["benchmark", *args, *extra])


@pytest.mark.usefixtures("tiny_cli")
def test_end_to_end(data: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    assert bench(data, out, "all", *SMALL) == 0
    summary = json.loads((out / "benchmark.json").read_text())
    rows = [r["row"] for r in summary["table"]]
    assert rows == ["saliency", "gradcam", "reference: gaussian", "reference: random"]
    for row in summary["table"]:
        for name, cell in row["metrics"].items():
            assert cell["n"] == 2 or name == "energy_pointing", (row["row"], name)
    assert {m["name"]: m["higher_is_better"] for m in summary["metrics"]}["deletion"] is False
    assert set(summary["curves"]) == {"deletion", "insertion", "randomisation"}
    csv = (out / "benchmark.csv").read_text().splitlines()
    assert csv[0] == "row,metric,category,higher_is_better,mean,ci95,n"
    assert len(csv) == 1 + 4 * len(summary["metrics"])
    html = (out / "benchmark.html").read_text()
    assert 'class="best"' in html
    assert "data:image/png;base64," in html
    assert "&darr;" in html
    assert "http" not in html.replace("http-equiv", "")
    # the reference maps ignore the model: they fail the sanity check
    ref = next(r for r in summary["table"] if r["row"] == "reference: gaussian")
    assert ref["metrics"]["randomisation"]["mean"] == pytest.approx(1.0)
    assert ref["metrics"]["max_sensitivity"]["mean"] == 0.0


@pytest.mark.usefixtures("tiny_cli")
def test_rerun_with_a_new_metric_uses_the_cache(data: Path, tmp_path: Path, explain_calls: list[str]) -> None:
    out = tmp_path / "out"
    assert bench(data, out, "sparseness,pointing_game") == 0
    assert sorted(explain_calls) == ["gradcam"] * 2 + ["saliency"] * 2
    cached = sorted((out / "cache").glob("*.npz"))
    assert len(cached) == 4
    mtimes = [p.stat().st_mtime_ns for p in cached]
    explain_calls.clear()
    assert bench(data, out, "sparseness,pointing_game,deletion", *SMALL[:2]) == 0
    assert explain_calls == []
    assert [p.stat().st_mtime_ns for p in sorted((out / "cache").glob("*.npz"))] == mtimes
    summary = json.loads((out / "benchmark.json").read_text())
    assert all(r["metrics"]["deletion"]["n"] == 2 for r in summary["table"])
    records = (out / "results.jsonl").read_text().splitlines()
    assert len(records) == 2 * 4 * 3  # nothing was computed twice


@pytest.mark.usefixtures("tiny_cli")
def test_interrupted_run_resumes(data: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    out = tmp_path / "out"
    calls = {"n": 0}
    original = Deletion._evaluate

    def interrupting(self: Deletion, sample):  # type: ignore[no-untyped-def]
        calls["n"] += 1
        if calls["n"] == 4:
            raise KeyboardInterrupt
        return original(self, sample)

    monkeypatch.setattr(Deletion, "_evaluate", interrupting)
    assert bench(data, out, "sparseness,deletion", *SMALL[:2]) == 130
    done = (out / "results.jsonl").read_text().splitlines()
    assert len(done) == 3 * 2  # three (image, row) pairs finished, each with its two metrics
    with open(out / "results.jsonl", "a") as f:
        f.write('{"image": "a", "row_key"')  # a write cut short by the interruption
    calls["n"] = -100
    assert bench(data, out, "sparseness,deletion", *SMALL[:2]) == 0
    assert calls["n"] == -100 + 8 - 3  # only the five missing pairs were evaluated
    summary = json.loads((out / "benchmark.json").read_text())
    assert all(c["n"] == 2 for r in summary["table"] for c in r["metrics"].values())


def test_dataset_errors(tmp_path: Path, data: Path) -> None:
    with pytest.raises(FileNotFoundError, match="no such folder"):
        load_dataset(tmp_path / "missing")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="no image files"):
        load_dataset(tmp_path / "empty")
    Image.fromarray(np.full((10, 10), 255, np.uint8)).save(data / "masks" / "a.png")
    with pytest.raises(ValueError, match="must have their image's size"):
        load_dataset(data)
    items = load_dataset("samples")
    assert [i.stem for i in items][:2] == ["chelsea", "coffee"]
    assert all(i.mask is not None for i in items)


def test_unknown_metric_is_a_clear_cli_error(tmp_path: Path, data: Path) -> None:
    assert main(["benchmark", "--data", str(data), "--metrics", "deleton", "--out", str(tmp_path)]) == 2
    assert main(["benchmark", "--data", str(data), "--metric-param", "bogus=1", "--out", str(tmp_path)]) == 2


def test_mean_ci_and_references() -> None:
    mean, half, n = mean_ci([1.0, 2.0, 3.0, float("nan")])
    assert (mean, n) == (2.0, 3)
    assert half == pytest.approx(4.302652729911275 * 1.0 / np.sqrt(3))
    assert np.isnan(mean_ci([5.0])[1])
    g = reference_map("gaussian", (9, 9))
    assert g[4, 4] == g.max() == 1.0
    assert g[0, 0] == g.min()
    assert reference_map("random", (5, 5), 1).equal(reference_map("random", (5, 5), 1))
    with pytest.raises(ValueError, match="gaussian"):
        reference_map("uniform", (5, 5))


def test_best_rows_follow_the_direction_and_skip_references() -> None:
    from cnnlens.report.benchmark import best_rows

    def cell(v: float) -> dict[str, float]:
        return {"mean": v}

    summary = {
        "metrics": [{"name": "up", "higher_is_better": True}, {"name": "down", "higher_is_better": False}],
        "table": [
            {"row": "a", "reference": False, "metrics": {"up": cell(0.5), "down": cell(0.2)}},
            {"row": "b", "reference": False, "metrics": {"up": cell(0.5), "down": cell(0.1)}},
            {"row": "ref", "reference": True, "metrics": {"up": cell(0.9), "down": cell(0.0)}},
        ],
    }
    assert best_rows(summary) == {"up": {"a", "b"}, "down": {"b"}}


@pytest.mark.usefixtures("tiny_cli")
def test_all_methods_skip_what_cannot_explain_the_model_and_quick_applies(data: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    args = ["--data", str(data), "--methods", "all", "--metrics", "sparseness", "--quick", "--no-references"]
    assert main(["benchmark", *args, "--out", str(out)]) == 0
    summary = json.loads((out / "benchmark.json").read_text())
    names = [m["name"] for m in summary["methods"]]
    assert "spn" not in names and "gradcam" in names  # tiny has no SPN: left out of 'all'
    params = {m["name"]: m["params"] for m in summary["methods"]}
    assert params["rise"]["n_masks"] == 256 and params["integrated_gradients"]["steps"] == 16
