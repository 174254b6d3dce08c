"""The command line, run for real (in-process through ``main`` and once as a console script)."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from cnnlens.cli import common, main
from cnnlens.data import load_sample

FAST = ["-m", "saliency,gradcam,occlusion", "-p", "window=64", "-p", "stride=64"]


@pytest.fixture(scope="module")
def chelsea(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("img") / "chelsea.jpg"
    load_sample("chelsea").save(path)
    return path


@pytest.mark.slow
def test_explain_chelsea(chelsea: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "out"
    assert main(["explain", str(chelsea), *FAST, "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "top-5" in printed and "seconds" in printed
    summary = json.loads((out / "summary.json").read_text())
    image = summary["images"][0]
    assert image["predictions"][0]["class_name"] in {"Egyptian cat", "tabby", "tiger cat"}
    assert len(image["predictions"]) == 5
    assert {e["method"] for e in image["explanations"]} == {"saliency", "gradcam", "occlusion"}
    for method in ("saliency", "gradcam", "occlusion"):
        with np.load(out / "chelsea" / f"{method}.npz") as f:
            assert f["attribution"].shape == (224, 224) and f["attribution"].dtype == np.float32
            assert int(f["target"]) == image["predictions"][0]["index"]
            assert 0 < float(f["score"]) <= 1
        assert Image.open(out / "chelsea" / f"{method}.png").size[0] > 0
    assert summary["images"][0]["explanations"][1]["layer"] == "bn2"


@pytest.mark.slow
def test_explain_keeps_going_past_bad_images(
    chelsea: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    bad = tmp_path / "broken.png"
    bad.write_bytes(b"\x89PNG\r\n\x1a\nrubbish")
    missing = tmp_path / "missing.jpg"
    out = tmp_path / "out"
    code = main(["explain", str(bad), str(missing), str(chelsea), "-m", "gradcam", "--out", str(out)])
    assert code == 1
    err = capsys.readouterr().err
    assert "broken.png" in err and "missing.jpg: no such file" in err
    summary = json.loads((out / "summary.json").read_text())
    assert [i["stem"] for i in summary["images"]] == ["chelsea"]
    assert len(summary["errors"]) == 2
    assert (out / "chelsea" / "gradcam.npz").is_file()


@pytest.mark.slow
def test_explain_reports_each_bad_input_once(
    chelsea: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    folder = tmp_path / "a_folder"
    folder.mkdir()
    text = tmp_path / "notes.jpg"  # a text file with an image name
    text.write_text("not a picture\n")
    truncated = tmp_path / "cut.jpg"
    load_sample("coffee").save(truncated, quality=95)
    data = truncated.read_bytes()
    truncated.write_bytes(data[: len(data) // 2])
    bomb = tmp_path / "bomb.png"  # 1,000,000 pixels in a few kB, over the limit given below
    Image.new("L", (1000, 1000)).save(bomb)
    out = tmp_path / "out"
    bad = {
        folder: "is a directory",
        text: "not an image",
        truncated: "corrupt or truncated",
        bomb: "over the limit",
    }
    args = [
        "explain",
        *map(str, bad),
        str(chelsea),
        "-m",
        "gradcam",
        "--max-pixels",
        "500000",
        "-o",
        str(out),
    ]
    assert main(args) == 1
    lines = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    for path, reason in bad.items():
        mentions = [line for line in lines if path.name in line]
        assert len(mentions) == 1, f"{path.name}: {mentions}"
        assert mentions[0].startswith("error: ") and reason in mentions[0] and str(path) in mentions[0]
    assert len(lines) == len(bad), lines
    summary = json.loads((out / "summary.json").read_text())
    assert [i["stem"] for i in summary["images"]] == ["chelsea"]
    assert sorted(e["path"] for e in summary["errors"]) == sorted(map(str, bad))
    assert (out / "chelsea" / "gradcam.npz").is_file()


@pytest.mark.slow
def test_explain_max_pixels_above_pillows_limit(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """--max-pixels decides, not Pillow's own limit (here lowered so that the image is over twice
    it, while the 224 x 224 crop of the preprocessing is not)."""
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 60_000)
    big = tmp_path / "big.png"
    Image.new("RGB", (1000, 1000), (120, 80, 40)).save(big)
    out = tmp_path / "out"
    assert main(["explain", str(big), "-m", "gradcam", "--max-pixels", "1000000", "-o", str(out)]) == 0
    assert main(["explain", str(big), "-m", "gradcam", "--max-pixels", "0", "-o", str(out)]) == 2


@pytest.mark.slow
def test_explain_writes_method_extras(chelsea: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    args = ["explain", str(chelsea), "-m", "integrated_gradients,lime", "--quick", "-o", str(out)]
    args += ["-p", "steps=4", "-p", "n_samples=32", "-p", "n_segments=12", "-p", "top_k=2"]
    assert main(args) == 0
    by_method = {
        e["method"]: e for e in json.loads((out / "summary.json").read_text())["images"][0]["explanations"]
    }
    ig, lime = by_method["integrated_gradients"], by_method["lime"]
    assert ig["extras"]["completeness_gap"] >= 0
    with np.load(out / ig["npz"]) as f:
        assert float(f["extra_completeness_gap"]) == pytest.approx(ig["extras"]["completeness_gap"], rel=1e-5)
    assert {"r2", "intercept"} <= set(lime["extras"])
    assert {"extra_segments", "extra_top_mask"} <= set(lime["extra_arrays"])
    with np.load(out / lime["npz"]) as f:
        segments, mask, weights = f["extra_segments"], f["extra_top_mask"], f["extra_weights"]
        assert segments.shape == mask.shape == (224, 224) and mask.dtype == bool
        assert weights.shape == (int(segments.max()) + 1,)
        top = np.unique(segments[mask])  # the mask is made of the superpixels with the largest weights
        assert 1 <= len(top) <= 2 and set(top) <= set(np.argsort(-weights)[:2])


@pytest.mark.slow
def test_explain_several_targets_and_names(chelsea: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    code = main(
        ["explain", str(chelsea), "-m", "gradcam", "-t", "tabby", "-t", "281,espresso", "--out", str(out)]
    )
    assert code == 0
    files = sorted(p.name for p in (out / "chelsea").glob("*.npz"))
    assert files == ["gradcam-espresso.npz", "gradcam-tabby.npz"]


@pytest.mark.slow
@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["-m", "gradcm"], "unknown method 'gradcm'; closest: gradcam"),
        (["-t", "tabbby"], "unknown class 'tabbby'; closest: tabby"),
        (["-t", "1000"], "out of range"),
        (["-m", "gradcam", "--layer", "conv_hed"], "closest: conv_head"),
        (["-m", "saliency", "--layer", "bn2"], "none of saliency uses a layer"),
        (["-m", "saliency", "-p", "window=3"], "no selected method takes the parameter"),
        (["-m", "occlusion", "-p", "window"], "KEY=VALUE"),
        (["-m", "occlusion", "-p", "window=0"], "window and stride must be positive"),
        (["--model", "nosuchmodel"], "unknown model 'nosuchmodel'"),
        (["--model", "missing/ckpt.pt"], "no such checkpoint"),
    ],
)
def test_explain_errors(
    chelsea: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], args: list[str], message: str
) -> None:
    out = tmp_path / "out"
    assert main(["explain", str(chelsea), *args, "--out", str(out)]) == 2
    assert message in capsys.readouterr().err
    assert not out.exists()


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["explain", "a.jpg", "--top", "0"], "--top must be a positive integer, got 0"),
        (["explain", "a.jpg", "--max-pixels", "-1"], "--max-pixels must be a positive integer, got -1"),
        (["layers", "a.jpg", "--batch-size", "0"], "--batch-size must be a positive integer, got 0"),
        (["channels", "a.jpg", "--top", "0"], "--top must be a positive integer, got 0"),
        (["channels", "a.jpg", "--patches", "0"], "--patches must be a positive integer, got 0"),
        (["evaluate", "run", "--errors", "-1"], "--errors must be an integer of at least 0, got -1"),
        (["evaluate", "run", "--batch-size", "0"], "--batch-size must be a positive integer, got 0"),
    ],
)
def test_counts_below_their_minimum_stop_before_any_work(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], argv: list[str], message: str
) -> None:
    out = tmp_path / "out"
    assert main([*argv, "--out", str(out)]) == 2
    assert f"error: {message}" in capsys.readouterr().err
    assert not out.exists()


def test_an_integer_given_for_a_float_parameter_becomes_that_float() -> None:
    from cnnlens.cli.benchmark import build_metrics
    from cnnlens.cli.common import build_methods
    from tests.conftest import tiny_loaded

    (deletion,) = build_metrics(["deletion"], {"blur_sigma": 2, "steps": 4})
    assert type(deletion.blur_sigma) is float and type(deletion.steps) is int
    (smooth,) = build_methods(tiny_loaded(), ["smoothgrad"], {"noise": 1, "n_samples": 2}, None)
    assert type(smooth.get_params()["noise"]) is float and type(smooth.get_params()["n_samples"]) is int


@pytest.mark.slow
def test_methods_and_models_list(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["methods"]) == 0
    printed = capsys.readouterr().out
    for name in ("saliency", "gradcam", "occlusion"):
        assert name in printed
    assert main(["models"]) == 0
    printed = capsys.readouterr().out
    assert "efficientnet_lite0" in printed and "resnet50" in printed


@pytest.mark.slow
def test_models_show(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["models", "--show", "efficientnet_lite0"]) == 0
    printed = capsys.readouterr().out
    assert "default CAM layer: bn2" in printed and "conv_head" in printed


def test_docs_methods_table_is_generated_from_the_registry() -> None:
    from cnnlens.attribution import methods_markdown

    docs = Path(__file__).resolve().parents[2] / "docs" / "methods.md"
    assert methods_markdown() in docs.read_text(), "regenerate: cnnlens methods --markdown"


@pytest.mark.slow
def test_demo_writes_report(tmp_path: Path) -> None:
    out = tmp_path / "demo"
    assert main(["demo", "--samples", "coffee", "--out", str(out)]) == 0
    html = (out / "index.html").read_text()
    assert html.count("data:image/") >= 2 and "espresso" in html
    assert "completeness gap" in html  # Integrated Gradients' check of its own map
    assert 'alt="lime top 5 superpixels"' in html  # LIME's top-k superpixel mask
    summary = json.loads((out / "summary.json").read_text())
    assert summary["images"][0]["predictions"][0]["class_name"] == "espresso"


@pytest.mark.slow
def test_quick_settings_and_overrides(chelsea: Path, tmp_path: Path) -> None:
    from cnnlens.cli.common import build_methods
    from cnnlens.models import load_model

    model = load_model("efficientnet_lite0")
    quick = build_methods(model, ["rise", "double_occlusion"], {"window": 40}, None, quick=True)
    assert quick[0].get_params()["n_masks"] == 256  # RISE.quick_params
    assert quick[1].get_params()["window"] == 40  # the user's -p wins over the quick setting
    assert quick[1].get_params()["stride"] == 32
    full = build_methods(model, ["rise"], {}, None)
    assert full[0].get_params()["n_masks"] == 1000
    # a quick preset the user did not ask for never counts as an unused parameter
    build_methods(model, ["saliency"], {}, None, quick=True)
    # --precision reaches the methods that take it, and -p precision= wins
    # (fp32 and auto: they run on every CPU; occlusion's own default is auto)
    occ, sal, cam = build_methods(model, ["occlusion", "saliency", "cam"], {}, None, precision="fp32")
    assert occ.get_params()["precision"] == "fp32" and sal.get_params()["precision"] == "fp32"
    assert "precision" not in cam.get_params()  # CAM reads the head's weights: no precision to set
    (rise,) = build_methods(model, ["rise"], {}, None, backend="eager", precision=None)
    assert rise.get_params()["backend"] == "eager" and rise.get_params()["precision"] == "auto"
    (rise,) = build_methods(model, ["rise"], {}, None, memory_format="contiguous")
    assert rise.get_params()["memory_format"] == "contiguous"
    (occ,) = build_methods(model, ["occlusion"], {"precision": "auto"}, None, precision="fp32")
    assert occ.get_params()["precision"] == "auto"
    out = tmp_path / "o"
    code = main(
        [
            "explain",
            str(chelsea),
            "-m",
            "rise",
            "--quick",
            "--precision",
            "fp32",
            "-p",
            "n_masks=64",
            "-o",
            str(out),
        ]
    )
    assert code == 0
    assert (out / "chelsea" / "rise.npz").exists()


@pytest.mark.slow
def test_console_script_runs() -> None:
    exe = shutil.which("cnnlens", path=str(Path(sys.executable).parent))
    assert exe is not None
    result = subprocess.run([exe, "methods"], capture_output=True, text=True, check=False, timeout=120)
    assert result.returncode == 0 and "gradcam" in result.stdout
    result = subprocess.run(
        [sys.executable, "-m", "cnnlens", "--version"], capture_output=True, text=True, check=False
    )
    assert result.stdout.startswith("cnnlens ")


def test_a_bad_parameter_is_one_line_but_a_bug_shows_its_traceback(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from cnnlens.cli import methods as methods_cmd

    assert main(["explain", "a.jpg", "--model", "tinycnn", "-p", "window=0", "--out", "o"]) == 2
    err = capsys.readouterr().err
    assert "error:" in err and "Traceback" not in err

    def broken(_args: object) -> int:
        raise ValueError("a plain ValueError from a bug, not a user's input")

    monkeypatch.setattr(methods_cmd, "run", broken)
    with pytest.raises(ValueError, match="from a bug"):
        main(["methods"])


@pytest.mark.slow
def test_explain_prints_deeplift_and_lrp_checks(
    chelsea: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    # The notes must be readable whatever the terminal: at 80 columns (what CI's COLUMNS says) rich
    # wraps the column, so the check reads the table at a width that keeps each note on one line.
    monkeypatch.setattr(common.console, "_width", 200)
    out = tmp_path / "out"
    args = ["explain", str(chelsea), "--model", "tinycnn", "-m", "deeplift,lrp,saliency", "--out", str(out)]
    assert main(args) == 0
    printed = capsys.readouterr().out
    by_method = {
        e["method"]: e for e in json.loads((out / "summary.json").read_text())["images"][0]["explanations"]
    }
    gap = by_method["deeplift"]["extras"]["completeness_gap"]
    lrp = by_method["lrp"]["extras"]
    assert "notes" in printed and f"completeness gap {gap:.3g}" in printed
    assert f"relevance sum {lrp['relevance_sum']:.4g}, of logit {lrp['target_logit']:.4g}" in printed
    assert by_method["saliency"]["extras"] == {}
