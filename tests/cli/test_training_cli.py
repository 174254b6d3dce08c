"""The real ``cnnlens data``, ``train`` and ``evaluate`` commands, run in-process."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest

from cnnlens.cli import main

pytestmark = pytest.mark.slow  # every test runs real commands (data, train, evaluate, explain, experiment)


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("cli")
    assert main(["data", "synth", "--out", str(root / "shapes"), "--classes", "2", "--per-class", "15",
                 "--size", "24", "--spurious", "0.9"]) == 0  # fmt: skip
    run = root / "run"
    argv = ["train", str(root / "shapes" / "manifest.csv"), "--model", "tinycnn", "--no-pretrained",
            "--freeze", "none", "--epochs", "2", "--image-size", "24", "--out", str(run)]  # fmt: skip
    assert main(argv) == 0
    return root, run


def test_train_writes_a_run(trained: tuple[Path, Path], capsys: pytest.CaptureFixture[str]) -> None:
    _, run = trained
    for name in ("best.pt", "last.pt", "config.json", "split.json", "curves.png", "history.json"):
        assert (run / name).is_file()
    assert len(json.loads((run / "history.json").read_text())) == 2
    assert main(["train", "--resume", str(run)]) == 0
    assert "already complete" in capsys.readouterr().out


def test_existing_run_folder_is_refused(
    trained: tuple[Path, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    root, run = trained
    argv = ["train", str(root / "shapes" / "manifest.csv"), "--model", "tinycnn", "--out", str(run)]
    assert main(argv) == 2
    assert "already exists; use --resume" in capsys.readouterr().err


def test_evaluate_json_and_files(trained: tuple[Path, Path], capsys: pytest.CaptureFixture[str]) -> None:
    _, run = trained
    assert main(["evaluate", str(run), "--json"]) == 0
    body = json.loads(capsys.readouterr().out)
    assert body["n"] == 4
    assert set(body["macro"]) == {"precision", "sensitivity", "specificity", "f1"}
    assert [r["class"] for r in body["per_class"]] == ["circle", "triangle"]
    for name in ("metrics.json", "confusion.json", "confusion.png", "misclassified.png"):
        assert (run / "eval-test" / name).is_file()


def test_evaluate_on_another_dataset_prints_a_table(
    trained: tuple[Path, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    root, run = trained
    assert main(["evaluate", str(run), str(root / "shapes" / "images"), "--errors", "4"]) == 0
    out = capsys.readouterr().out
    assert re.search(r"on\s+30\s+images", out)
    assert "macro" in out
    assert "specificity" in out
    assert (run / "eval-images" / "misclassified.png").is_file()


def test_other_commands_accept_the_run_as_model(trained: tuple[Path, Path]) -> None:
    root, run = trained
    image = next((root / "shapes" / "images" / "circle").iterdir())
    assert main(["explain", str(image), "--model", str(run), "-m", "gradcam", "--out", str(root / "x")]) == 0
    summary = json.loads((root / "x" / "summary.json").read_text())
    assert summary["images"][0]["predictions"][0]["class_name"] in ("circle", "triangle")


def test_export_and_bad_data(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["data", "export", "lfw-faces", "--out", str(tmp_path / "lfw")]) == 0
    assert len(list((tmp_path / "lfw" / "face").iterdir())) == 100
    (tmp_path / "one" / "cats").mkdir(parents=True)
    (tmp_path / "one" / "cats" / "a.txt").write_text("not an image")
    argv = ["train", str(tmp_path / "one"), "--model", "tinycnn", "--out", str(tmp_path / "r")]
    assert main(argv) == 2
    err = " ".join(capsys.readouterr().err.split())
    assert "at least two classes" in err
    assert "not an image file" in err
    assert not (tmp_path / "r").exists()


def test_saliency_aware_train_and_explain(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from cnnlens.data.synthetic import SynthConfig, generate

    data = generate(tmp_path / "data", SynthConfig(2, 8, 24, seed=2))
    run = tmp_path / "run"
    args = ["train", str(data), "--model", "tinycnn", "--no-pretrained", "--freeze", "none", "--epochs", "1"]
    args += ["--image-size", "32", "--saliency-aware", "--mask-ratio", "0.5", "--loc-loss", "l1"]
    assert main([*args, "--lambda", "2", "-o", str(run)]) == 0
    config = json.loads((run / "config.json").read_text())
    assert (config["head"], config["mask_ratio"], config["loc_loss"], config["loc_weight"]) == (
        "spn",
        0.5,
        "l1",
        2.0,
    )
    assert json.loads((run / "data.json").read_text())["masks_used_in_training"] >= 1
    image = next((data.parent / "images").rglob("*.png"))
    out = tmp_path / "explained"
    assert main(["explain", str(image), "--model", str(run), "-m", "spn,gradcam", "-o", str(out)]) == 0
    with np.load(out / image.stem / "spn.npz") as z:
        assert z["attribution"].shape == (32, 32)
    assert main(["explain", str(image), "--model", str(run), "--quick", "-o", str(tmp_path / "all")]) == 0
    assert (tmp_path / "all" / image.stem / "spn.png").exists()  # 'all' includes spn for an SPN model
    capsys.readouterr()


def test_saliency_aware_bad_flags(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from cnnlens.data.synthetic import SynthConfig, generate

    data = generate(tmp_path / "data", SynthConfig(2, 4, 24, seed=2))
    base = ["train", str(data), "--model", "tinycnn", "--no-pretrained", "--epochs", "1"]
    assert main([*base, "--mask-ratio", "0.5", "-o", str(tmp_path / "r1")]) == 2
    assert "only apply to saliency-aware training" in capsys.readouterr().err
    assert main([*base, "--saliency-aware", "--head", "mlp64", "-o", str(tmp_path / "r2")]) == 2
    assert "cannot be combined with --head mlp64" in capsys.readouterr().err
    assert main([*base, "--saliency-aware", "--mask-ratio", "2", "-o", str(tmp_path / "r3")]) == 2
    assert "--mask-ratio must be between 0 and 1" in capsys.readouterr().err
    assert not (tmp_path / "r3").exists()
    image = next((data.parent / "images").rglob("*.png"))
    code = main(
        [
            "explain",
            str(image),
            "--model",
            "tinycnn",
            "--no-pretrained",
            "-m",
            "spn",
            "-o",
            str(tmp_path / "e"),
        ]
    )
    assert code == 2
    assert "no saliency prediction net" in capsys.readouterr().err


def test_experiment_command_on_a_tiny_configuration(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from cnnlens.data.synthetic import SynthConfig, generate

    data = generate(tmp_path / "data", SynthConfig(3, 12, 24, seed=3))
    out = tmp_path / "exp"
    argv = ["experiment", "saliency-aware", str(data), "--backbones", "tinycnn:random", "--ratios", "0,0.5",
            "--loc-losses", "ce,l1", "--seeds", "2", "--epochs", "1", "--batch-size", "8",
            "--image-size", "32", "--augment", "none", "--figure-images", "1", "-o", str(out)]  # fmt: skip
    assert main(argv) == 0
    printed = " ".join(capsys.readouterr().out.split())
    for column in ("ratio", "loss", "acc", "prec", "sens", "spec", "F1", "SPN IoU", "CAM pointing"):
        assert f" {column} " in printed
    assert "[6/6] tinycnn:random SA r=0.5 l1 seed 1" in printed
    body = json.loads((out / "results.json").read_text())
    assert len(body["runs"]) == 6
    assert [(r["method"], r["mask_ratio"], r["loc_loss"]) for r in body["table"]] == [
        ("baseline", 0.0, None),
        ("saliency-aware", 0.5, "ce"),
        ("saliency-aware", 0.5, "l1"),
    ]
    assert all(r["freeze"] == "none" for r in body["runs"])  # random F-Nets train entirely
    md = (out / "results.md").read_text()
    assert "## Localisation loss compared" in md
    assert (out / "figure.png").is_file()


def test_saliency_aware_train_trains_the_last_stage_by_default(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from cnnlens.data.synthetic import SynthConfig, generate

    data = generate(tmp_path / "data", SynthConfig(2, 6, 24, seed=2))
    # tinycnn "pretrained" is its seeded initialisation, so it stands for a pretrained F-Net here
    base = ["train", str(data), "--model", "tinycnn", "--epochs", "1", "--image-size", "32",
            "--saliency-aware"]  # fmt: skip
    assert main([*base, "-o", str(tmp_path / "run")]) == 0
    assert json.loads((tmp_path / "run" / "config.json").read_text())["freeze"] == "last-stage"
    assert "freezes the whole F-Net" not in capsys.readouterr().err
    assert main([*base, "--freeze", "features", "-o", str(tmp_path / "frozen")]) == 0
    err = " ".join(capsys.readouterr().err.split())
    assert "freezes the whole F-Net" in err
    # --model RUN with the same head and classes: training continues from the trained head
    again = ["train", str(data), "--model", str(tmp_path / "run"), "--epochs", "1", "--saliency-aware"]
    assert main([*again, "-o", str(tmp_path / "again")]) == 0
    assert "training continues from it" in " ".join(capsys.readouterr().err.split())
