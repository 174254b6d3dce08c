"""The demo page: methods in rows grouped by family, each map with the colour scale of its values."""

from __future__ import annotations

import re
from pathlib import Path

import torch
from PIL import Image

from cnnlens.attribution import Explanation
from cnnlens.pipeline import ImageResult
from cnnlens.report import demo_report
from cnnlens.viz import choose_scale


def exp(method: str, values: torch.Tensor) -> Explanation:
    return Explanation(
        values[None], torch.tensor([1]), torch.tensor([0.7]), method=method, class_names=["a", "b"]
    )


def test_demo_page_rows_families_and_scales(tmp_path: Path) -> None:
    cam = torch.linspace(2.8, 19.1, 64).reshape(8, 8)
    signed = torch.linspace(-1.0, 3.0, 64).reshape(8, 8)
    results = []
    for i, stem in enumerate(["one", "two"]):
        r = ImageResult(stem, f"{stem}.png", Image.new("RGB", (8, 8), (i * 50, 0, 0)), [(1, "b", 0.7)])
        for e in (exp("cam", cam * (i + 1)), exp("gradxinput", signed), exp("gradcam", cam)):
            r.explanations.append((e, tmp_path / "x.png", tmp_path / "x.npz"))
        results.append(r)
    summary = {"model": {"name": "tiny", "arch": "tinycnn", "source": "random"}, "errors": []}
    html = demo_report(results, summary, ["cam", "gradxinput", "gradcam"], tmp_path).read_text()
    # one row per method with a colour bar, grouped by family: the two CAM methods under "cam"
    assert html.count('class="method"') == 3 and html.count('class="bar"') == 6  # one per map
    families = re.findall(r"<h3>(\w+)</h3>", html)
    assert families == ["cam", "gradient"]
    cam_row = html[html.index('id="m-cam"') : html.index('id="m-gradcam"')]
    assert "sequential scale" in cam_row
    for factor in (1, 2):  # each image's map on its own range
        ticks = "".join(f"<span>{t:.3g}</span>" for t in choose_scale(factor * cam.numpy()).ticks())
        assert ticks in cam_row
    assert "<span>2.8</span>" in cam_row and "<span>5.6</span>" in cam_row
    grad_row = html[html.index('id="m-gradxinput"') :]
    assert "diverging scale" in grad_row and "<span>0</span>" in grad_row
    assert html.count('alt="cam on ') == 2  # both images in the cam row, side by side
    assert "<th>image</th>" not in html  # no more image x 23-column sideways table
