"""``cnnlens benchmark`` end to end on the tiny CNN: outputs, attribution cache, resume, data."""

from __future__ import annotations

import csv
import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image

from cnnlens.attribution import Attribution, create
from cnnlens.cli import main
from cnnlens.data.synthetic import SynthConfig, generate
from cnnlens.errors import DataWarning
from cnnlens.evaluation import create_metric
from cnnlens.evaluation.benchmark import (
    BenchmarkRun,
    load_dataset,
    mean_ci,
    metric_key,
    reference_map,
    row_key,
    run_benchmark,
)
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
        inputs = args[0]
        calls.extend([self.name] * (len(inputs) if inputs.ndim == 4 else 1))  # one per image explained
        return original(self, *args, **kwargs)

    monkeypatch.setattr(Attribution, "explain", counting)
    return calls


def bench(data: Path, out: Path, metrics: str, *extra: str) -> int:
    args = ["--data", str(data), "--methods", "saliency,gradcam", "--metrics", metrics, "--out", str(out)]
    return main(["benchmark", *args, *extra])


@pytest.mark.slow
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
    assert set(summary["curves"]) == {"deletion", "insertion", "randomisation", "randomisation_ssim"}
    ssim = next(m for m in summary["metrics"] if m["name"] == "randomisation_ssim")
    assert (ssim["category"], ssim["higher_is_better"], ssim["of"]) == ("sanity", False, "randomisation")
    csv = (out / "benchmark.csv").read_text().splitlines()
    assert csv[0] == "row,metric,category,higher_is_better,mean,ci95,n"
    assert len(csv) == 1 + 4 * len(summary["metrics"])
    html = (out / "benchmark.html").read_text()
    assert 'class="best"' in html
    assert "data:image/png;base64," in html
    assert "&darr;" in html
    assert "randomisation_ssim" in html
    assert any(line.startswith("saliency,randomisation_ssim,sanity,False,") for line in csv)
    assert "http" not in html.replace("http-equiv", "")
    # the reference maps ignore the model: they fail the sanity check
    ref = next(r for r in summary["table"] if r["row"] == "reference: gaussian")
    assert ref["metrics"]["randomisation"]["mean"] == pytest.approx(1.0)
    assert ref["metrics"]["randomisation_ssim"]["mean"] == pytest.approx(1.0)
    assert ref["metrics"]["max_sensitivity"]["mean"] == 0.0


@pytest.mark.slow
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


@pytest.mark.slow
@pytest.mark.usefixtures("tiny_cli")
def test_interrupted_run_resumes(data: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    out = tmp_path / "out"
    calls = {"n": 0}
    original = Deletion.queue

    def interrupting(self: Deletion, sample, queue):  # type: ignore[no-untyped-def]
        finish = original(self, sample, queue)

        def done():  # type: ignore[no-untyped-def]
            calls["n"] += 1  # the deletion result of one (image, row), after the block's passes ran
            if calls["n"] == 4:
                raise KeyboardInterrupt
            return finish()

        return done

    monkeypatch.setattr(Deletion, "queue", interrupting)
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


@pytest.mark.slow
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


# -- results belong to the model, input and mask that produced them ------------------------------


def api_run(out: Path, seed: int, metrics: tuple[str, ...] = ("sparseness", "pointing_game")) -> BenchmarkRun:
    model = tiny_loaded(seed)
    methods = [create("saliency", model)]
    chosen = [create_metric(m) for m in metrics]
    return BenchmarkRun(model, methods, chosen, out, out / "cache", references=("random",))


def per_image(summary: dict[str, Any], metric: str, row: str = "saliency") -> dict[str, float]:
    cells = next(r for r in summary["table"] if r["row"] == row)["metrics"]
    return dict(cells[metric]["per_image"])


def test_another_model_into_the_same_folder_gets_its_own_results(
    data: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    out = tmp_path / "out"
    images = load_dataset(data)
    first = run_benchmark(api_run(out, 0), images)
    assert "another model" not in caplog.text
    second = run_benchmark(api_run(out, 1), images)
    assert "also holds results of another model" in caplog.text
    alone = run_benchmark(api_run(tmp_path / "alone", 1), images)
    assert per_image(second, "sparseness") == per_image(alone, "sparseness")
    assert per_image(second, "sparseness") != per_image(first, "sparseness")
    lines = len((out / "results.jsonl").read_text().splitlines())
    assert lines == 2 * (2 * 2 * 2)  # two models x two images x two rows x two metrics
    again = run_benchmark(api_run(out, 0), images)  # back to the first model: nothing to compute
    assert len((out / "results.jsonl").read_text().splitlines()) == lines
    assert per_image(again, "sparseness") == per_image(first, "sparseness")


def test_a_changed_image_or_mask_is_recomputed_and_only_what_uses_it(data: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    before = run_benchmark(api_run(out, 0), load_dataset(data))
    lines = len((out / "results.jsonl").read_text().splitlines())
    mask = np.zeros((32, 32), np.uint8)
    mask[0:4, 0:4] = 255  # a corner far from the old mask
    Image.fromarray(mask).save(data / "masks" / "a.png")
    after = run_benchmark(api_run(out, 0), load_dataset(data))
    new = (out / "results.jsonl").read_text().splitlines()[lines:]
    assert sorted((json.loads(r)["image"], json.loads(r)["metric"]) for r in new) == [
        ("a", "pointing_game"),
        ("a", "pointing_game"),  # the saliency row and the random reference row
    ]
    assert per_image(after, "sparseness") == per_image(before, "sparseness")
    Image.fromarray(np.zeros((32, 32, 3), np.uint8)).save(data / "images" / "b.png")
    changed = run_benchmark(api_run(out, 0), load_dataset(data))
    assert per_image(changed, "sparseness")["b"] != per_image(before, "sparseness")["b"]
    assert per_image(changed, "sparseness")["a"] == per_image(before, "sparseness")["a"]


def test_records_without_an_input_key_are_not_reused(data: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    out.mkdir()
    run = api_run(out, 0, ("sparseness",))
    keys = {"row_key": row_key(run.methods[0]), "metric_key": metric_key(run.metrics[0])}
    stale = [{"image": s, **keys, "value": 9.0, "curve": None, "extras": {}} for s in ("a", "b")]
    (out / "results.jsonl").write_text("".join(json.dumps(r) + "\n" for r in stale))
    summary = run_benchmark(run, load_dataset(data))
    assert 9.0 not in per_image(summary, "sparseness").values()
    assert None not in per_image(summary, "sparseness").values()


# -- data: recursive folders, manifests and splits, unusable files --------------------------------


@pytest.fixture
def synth(tmp_path: Path) -> Path:
    generate(tmp_path / "synth", SynthConfig(classes=2, per_class=3, size=32))
    return tmp_path / "synth"


def manifest_rows(root: Path) -> list[dict[str, str]]:
    with open(root / "manifest.csv", newline="") as f:
        return list(csv.DictReader(f))


def test_a_synthetic_dataset_folder_is_read_recursively_with_its_masks(synth: Path) -> None:
    items = load_dataset(synth)
    rows = manifest_rows(synth)
    assert sorted(i.stem for i in items) == sorted(Path(r["path"]).stem for r in rows)
    for item in items:
        expected = np.asarray(Image.open(synth / "masks" / f"{item.stem}.png")) > 0
        assert item.mask is not None and np.array_equal(item.mask, expected)


@pytest.mark.parametrize("manifest", [False, True])
def test_a_manifest_split_keeps_only_its_rows(synth: Path, manifest: bool) -> None:
    test_stems = sorted(Path(r["path"]).stem for r in manifest_rows(synth) if r["split"] == "test")
    assert 0 < len(test_stems) < 6
    items = load_dataset(synth / "manifest.csv" if manifest else synth, split="test")
    assert sorted(i.stem for i in items) == test_stems
    assert all(i.mask is not None for i in items)
    assert len(load_dataset(synth / "manifest.csv")) == 6


def test_split_errors(synth: Path, data: Path, tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="no .*manifest.csv"):
        load_dataset(data, split="test")
    with pytest.raises(ValueError, match="'samples' has no splits"):
        load_dataset("samples", split="test")
    with pytest.raises(ValueError, match="split must be one of"):
        load_dataset(synth, split="testing")
    lines = (synth / "manifest.csv").read_text().splitlines()
    (synth / "manifest.csv").write_text("\n".join(line for line in lines if ",test," not in line) + "\n")
    with pytest.raises(ValueError, match="no row has split 'test' \\(splits present: train, val\\)"):
        load_dataset(synth, split="test")


def test_images_sharing_a_stem_are_named_by_their_path(tmp_path: Path) -> None:
    for folder in ("x", "y"):
        (tmp_path / "images" / folder).mkdir(parents=True)
        Image.new("RGB", (8, 8)).save(tmp_path / "images" / folder / "1.png")
    assert [i.stem for i in load_dataset(tmp_path)] == ["x/1", "y/1"]
    (tmp_path / "masks").mkdir()
    Image.new("L", (8, 8), 255).save(tmp_path / "masks" / "1.png")
    with pytest.raises(ValueError, match="cannot say which one its mask belongs to"):
        load_dataset(tmp_path)


def test_an_empty_mask_or_unreadable_image_is_skipped_with_a_warning(data: Path) -> None:
    Image.fromarray(np.zeros((32, 32), np.uint8)).save(data / "masks" / "a.png")
    (data / "images" / "c.png").write_bytes(b"not a png")
    with pytest.warns(DataWarning) as caught:
        items = load_dataset(data)
    messages = [str(w.message) for w in caught]
    assert any("a.png" in m and "mask is empty" in m and "without a mask" in m for m in messages)
    assert any("c.png" in m and "left out" in m for m in messages)
    assert [(i.stem, i.mask is not None) for i in items] == [("a", False), ("b", True)]


@pytest.mark.slow
@pytest.mark.usefixtures("tiny_cli")
@pytest.mark.parametrize(
    "mask", [np.zeros((32, 32), np.uint8), np.full((10, 10), 255, np.uint8)], ids=["empty", "wrong-size"]
)
def test_an_empty_mask_leaves_only_that_images_localisation_out(
    mask: np.ndarray, data: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    Image.fromarray(mask).save(data / "masks" / "a.png")
    out = tmp_path / "out"
    assert bench(data, out, "sparseness,pointing_game") == 0
    warned = [line for line in capsys.readouterr().err.splitlines() if line.startswith("warning: ")]
    assert len(warned) == 1 and "a.png" in warned[0]  # the DataWarning, as one line
    summary = json.loads((out / "benchmark.json").read_text())
    pointing = per_image(summary, "pointing_game")
    assert pointing["a"] is None and pointing["b"] is not None
    assert next(r for r in summary["table"] if r["row"] == "saliency")["metrics"]["sparseness"]["n"] == 2


def test_mask_of_another_size_drops_only_that_images_localisation(tmp_path: Path, data: Path) -> None:
    """As the README says: a wrong-size mask is dropped with a warning, the benchmark goes on."""
    Image.fromarray(np.full((10, 10), 255, np.uint8)).save(data / "masks" / "a.png")
    with pytest.warns(
        DataWarning, match=r"a\.png: mask is 10x10 but a\.png is .*must have their image's size"
    ):
        items = load_dataset(data)
    by_stem = {i.stem: i for i in items}
    assert by_stem["a"].mask is None
    assert any(i.mask is not None for i in items if i.stem != "a")
