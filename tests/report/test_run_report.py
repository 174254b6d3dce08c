"""``cnnlens report`` on a tiny trained run, and on output folders of other commands."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from cnnlens.cli import main
from cnnlens.report.run import confusable_pairs
from cnnlens.report.sections import Figure, Section, Table, write_section


def test_confusable_pairs_closed_form() -> None:
    c = np.array([[5, 3, 0], [1, 4, 2], [0, 0, 6]])
    pairs = confusable_pairs(c, ["a", "b", "c"])
    assert pairs[0] == ["a", "b", 3, 3 / 8, 1]  # a->b 3 times of 8 a's; b->a once
    assert [p[:3] for p in pairs] == [["a", "b", 3], ["b", "c", 2], ["b", "a", 1]]


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("report")
    assert main(["data", "synth", "--out", str(root / "shapes"), "--classes", "3", "--per-class", "10",
                 "--size", "24", "--seed", "1"]) == 0  # fmt: skip
    argv = ["train", str(root / "shapes" / "manifest.csv"), "--model", "tinycnn", "--no-pretrained",
            "--freeze", "none", "--epochs", "1", "--image-size", "24",
            "--out", str(root / "run")]  # fmt: skip
    assert main(argv) == 0
    return root / "run"


@pytest.mark.slow
def test_report_of_a_trained_run(run: Path, tmp_path: Path) -> None:
    from cnnlens.evaluation import evaluate

    truth = evaluate(run)
    out = tmp_path / "r.html"
    assert main(["report", str(run), "--out", str(out), "-m", "gradcam,occlusion", "--per-class", "1"]) == 0
    html = out.read_text()
    files = tmp_path / "r_files"
    assert 'name="generator" content="cnnlens report"' in html and "data:image" not in html
    shown = ("Model card", "tinycnn", "Training curves", "Confusion matrix", "most confusable", "specificity")
    for text in shown:
        assert text in html
    assert f"accuracy {truth.metrics.accuracy:.4f} on {truth.metrics.total} images" in html
    # every confusion count, row by row, as evaluate computes it
    table = html[html.index('<table class="confusion">') :]
    cells = [int(v) for v in re.findall(r'<td style="background: rgba[^"]*">(\d+)</td>', table)]
    assert cells == truth.metrics.confusion.ravel().tolist()
    # per class: one correct and one wrong image at most, each with both methods' overlays
    expected = sum(
        min(1, int(((truth.labels == c) & (truth.predictions == c)).sum()))
        + min(1, int(((truth.labels == c) & (truth.predictions != c)).sum()))
        for c in range(3)
    )
    assert html.count('alt="gradcam on ') == expected == html.count('alt="occlusion on ')
    srcs = re.findall(r'src="(r_files/[^"]+)" [^>]*loading="lazy"', html)
    assert srcs and all((tmp_path / s).is_file() for s in srcs)
    assert html.count('class="bar"') == 2 * expected  # a colour bar under every map
    ticks = r'<div class="ticks"><span>([^<]*)</span>(?:<span>[^<]*</span>)?<span>([^<]*)</span>'
    ends = [re.search(ticks, part) for part in html.split('alt="occlusion on ')[1:]]
    assert len(ends) == expected and all(m and m[1] != m[2] for m in ends)  # windows fit: no constant map
    # a second report replaces the first; a page that is not a report is never overwritten
    assert main(["report", str(run), "--out", str(out), "-m", "none"]) == 0
    assert 'alt="gradcam on ' not in out.read_text() and len(list(files.iterdir())) < len(srcs)
    other = tmp_path / "mine.html"
    other.write_text("<p>mine</p>")
    assert main(["report", str(run), "--out", str(other), "-m", "none"]) == 2
    assert other.read_text() == "<p>mine</p>" and not (tmp_path / "mine_files").exists()


def test_report_of_output_folders(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    folder = tmp_path / "study"
    (folder / "bench").mkdir(parents=True)
    metric = {"name": "deletion", "higher_is_better": False}
    table = [
        {"row": "gradcam", "reference": False, "metrics": {"deletion": {"mean": 0.2, "ci95": 0.01, "n": 4}}},
        {"row": "saliency", "reference": False, "metrics": {"deletion": {"mean": 0.3, "ci95": 0.02, "n": 4}}},
    ]
    bench = {"metrics": [metric], "table": table, "curves": {}}
    (folder / "bench" / "benchmark.json").write_text(json.dumps(bench))
    section = Section("umap", "UMAP of the features", text="Classes cluster.", verdict="separated")
    (folder / "umap").mkdir()
    Image.new("RGB", (10, 10), (200, 0, 0)).save(folder / "umap" / "umap.png")
    section.figures = [Figure("umap.png", "the test features")]
    section.tables = [Table(["class", "silhouette"], [["a", 0.5]])]
    write_section(folder, section)
    (folder / "explain" / "chelsea").mkdir(parents=True)
    Image.new("RGB", (20, 20), (0, 0, 255)).save(folder / "explain" / "chelsea" / "gradcam.png")
    preds = [{"index": 281, "class_name": "tabby", "probability": 0.5}]
    explained = [{"method": "gradcam", "png": "chelsea/gradcam.png", "seconds": 0.5}]
    escape = [{"method": "saliency", "png": "../../outside.png", "seconds": 0.1}]  # never read
    Image.new("RGB", (4, 4)).save(tmp_path / "outside.png")
    summary = {"model": {"name": "m", "arch": "a"}, "images": [{"stem": "chelsea", "predictions": preds,
               "explanations": explained + escape}]}  # fmt: skip
    (folder / "explain" / "summary.json").write_text(json.dumps(summary))
    out = tmp_path / "page.html"
    assert main(["report", str(folder), "--out", str(out)]) == 0
    html = out.read_text()
    assert "Benchmark: bench" in html
    assert "0.200 ± 0.010 *" in html and "0.300 ± 0.020<" in html  # the best (lowest deletion) marked
    assert "Explanations: explain" in html and "chelsea: tabby 50.0%" in html
    assert 'alt="gradcam on chelsea"' in html and 'alt="saliency on chelsea"' not in html
    assert "UMAP of the features" in html and "verdict: separated" in html and "silhouette" in html
    src = re.search(r'src="(page_files/[^"]*umap[^"]*)"', html)
    assert src and (tmp_path / src.group(1)).is_file()
    empty = tmp_path / "empty"
    empty.mkdir()
    assert main(["report", str(empty), "--out", str(tmp_path / "e.html")]) == 2
    assert "holds nothing to report" in capsys.readouterr().err
    assert not (tmp_path / "e.html").exists() and not list(tmp_path.glob(".e_files*"))
    assert main(["report", str(folder), "--out", str(tmp_path / "page.txt")]) == 2


def test_per_method_params() -> None:
    from cnnlens.cli.report import split_params
    from cnnlens.errors import InputError

    shared, own = split_params(
        ["batch_size=4", "occlusion:window=[8, 16]", "lime:n_samples=32"], ["occlusion", "lime"]
    )
    assert shared == {"batch_size": 4} and own == {
        "occlusion": {"window": [8, 16]},
        "lime": {"n_samples": 32},
    }
    with pytest.raises(InputError, match="not one of the methods"):
        split_params(["gradcam:layer=x"], ["occlusion"])
