"""Bad inputs end in one line "error: ..." with exit status 2, never a traceback (issue 16)."""

from __future__ import annotations

import os
import pickle
from pathlib import Path

import pytest
import torch
from PIL import Image

from cnnlens.cli import main
from cnnlens.models import load_model
from cnnlens.models.checkpoint import checkpoint_dict


@pytest.fixture(scope="module")
def image(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("img") / "grey.png"
    Image.new("RGB", (40, 32), (120, 90, 60)).save(path)
    return path


def one_line_error(args: list[str], capsys: pytest.CaptureFixture[str]) -> str:
    """Run the command line; check exit status 2 and one line without a traceback; return it."""
    code = main(args)
    err = capsys.readouterr().err
    assert code == 2, err
    assert "Traceback" not in err
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    return lines[0]


def explain(image: Path, out: Path, *extra: str) -> list[str]:
    return ["explain", str(image), "--model", "tinycnn", "-m", "saliency", *extra, "-o", str(out)]


def test_weights_of_other_shapes(image: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    state = load_model("tinycnn", pretrained=False).module.state_dict()
    bigger = {k: torch.zeros(*(s + 1 for s in v.shape)) if v.ndim else v for k, v in state.items()}
    torch.save(bigger, tmp_path / "bad.pt")
    line = one_line_error(explain(image, tmp_path / "o", "--weights", str(tmp_path / "bad.pt")), capsys)
    assert "bad.pt" in line and "other shapes" in line


def test_checkpoint_without_arch(image: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    ckpt = checkpoint_dict(load_model("tinycnn", pretrained=False))
    del ckpt["arch"]
    torch.save(ckpt, tmp_path / "noarch.pt")
    args = [
        "explain",
        str(image),
        "--model",
        str(tmp_path / "noarch.pt"),
        "-m",
        "saliency",
        "-o",
        str(tmp_path),
    ]
    line = one_line_error(args, capsys)
    assert "noarch.pt" in line and "without arch" in line


def test_cuda_without_cuda(
    image: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    line = one_line_error(explain(image, tmp_path, "--device", "cuda"), capsys)
    assert "'cuda' is not available" in line and "--device cpu" in line


def test_unknown_device(image: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    line = one_line_error(explain(image, tmp_path, "--device", "tpu9"), capsys)
    assert "unknown device 'tpu9'" in line


def test_huge_step_count_is_refused_up_front(
    image: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    args = explain(image, tmp_path, "-p", "steps=10000000000")
    args[args.index("saliency")] = "integrated_gradients"
    line = one_line_error(args, capsys)
    assert "steps=10000000000" in line and "lower steps" in line


def test_memory_error_during_explain_names_the_parameters(monkeypatch: pytest.MonkeyPatch) -> None:
    from cnnlens.attribution import create
    from cnnlens.attribution.methods.gradient import SmoothGrad
    from cnnlens.errors import InputError

    def no_memory(*args: object, **kwargs: object) -> torch.Tensor:
        raise MemoryError

    monkeypatch.setattr(SmoothGrad, "_attribute", no_memory)
    method = create("smoothgrad", load_model("tinycnn", pretrained=False), n_samples=7)
    with pytest.raises(InputError, match=r"ran out of memory; lower .*n_samples=7"):
        method.explain(torch.zeros(1, 3, 32, 32))


class Payload:
    """A pickle that would create a file while being loaded, if anything loaded it unsafely."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[object, tuple[str]]:
        return (os.system, (f"touch {self.marker}",))


def test_malicious_checkpoint_is_refused_in_one_line(
    image: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    marker = tmp_path / "pwned"
    evil = tmp_path / "evil.pt"
    with evil.open("wb") as f:
        pickle.dump({"state_dict": Payload(marker)}, f, protocol=2)
    for args in (
        ["explain", str(image), "--model", str(evil), "-m", "saliency", "-o", str(tmp_path / "o")],
        explain(image, tmp_path / "o", "--weights", str(evil)),
    ):
        line = one_line_error(args, capsys)
        assert "evil.pt" in line and "not a checkpoint cnnlens can load safely" in line
        assert "weights_only=False" not in line
    assert not marker.exists()


def test_corrupt_checkpoint_is_one_line(
    image: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    bad = tmp_path / "junk.pt"
    bad.write_bytes(b"\x80\x02not a pickle at all" * 10)
    line = one_line_error(
        ["explain", str(image), "--model", str(bad), "-m", "saliency", "-o", str(tmp_path)], capsys
    )
    assert "junk.pt" in line and "can load safely" in line


def test_non_conv_layer_is_refused_up_front(
    image: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    args = explain(image, tmp_path / "o", "--layer", "classifier")
    args[args.index("saliency")] = "gradcam"
    line = one_line_error(args, capsys)
    assert "--layer classifier" in line and "not a (N, C, h, w) feature map" in line
    assert not (tmp_path / "o").exists()  # refused before any image was explained


@pytest.mark.parametrize("param", ["window=100000", "fixed_window=100000", "window=[16,100000]"])
def test_window_larger_than_the_image(
    param: str, image: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    args = explain(image, tmp_path, "-p", param)
    args[args.index("saliency")] = "double_occlusion" if param.startswith("fixed") else "occlusion"
    line = one_line_error(args, capsys)
    key = param.split("=")[0]
    assert f"-p {param.replace(',', ', ')}: larger than the image (48x48 pixels" in line
    assert f"{key} must be at most 48" in line


@pytest.mark.parametrize("target", ["", "1,,2", " "])
def test_empty_target_is_an_error(
    target: str, image: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    line = one_line_error(explain(image, tmp_path, "--target", target), capsys)
    assert "has an empty class" in line


def test_symlink_loop_is_named(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    loop = tmp_path / "loop.png"
    loop.symlink_to(loop)
    assert main(explain(loop, tmp_path / "o")) == 2
    err = capsys.readouterr().err
    assert "loop.png: a symlink loop" in err and "no such file" not in err and "Traceback" not in err
