"""Image loading: formats, modes, orientation, and every way a file can be bad."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from cnnlens.data import Preprocessing, load_image, load_sample
from cnnlens.data.samples import available_samples
from cnnlens.errors import ImageLoadError


def gradient_rgb(w: int = 40, h: int = 30) -> Image.Image:
    x = np.linspace(0, 255, w, dtype=np.uint8)[None, :, None].repeat(h, 0)
    y = np.linspace(0, 255, h, dtype=np.uint8)[:, None, None].repeat(w, 1)
    return Image.fromarray(np.concatenate([x, y, 255 - x], axis=2))


@pytest.mark.parametrize("ext", ["jpg", "png", "bmp", "tiff", "webp"])
def test_formats(tmp_path: Path, ext: str) -> None:
    path = tmp_path / f"img.{ext}"
    gradient_rgb().save(path)
    im = load_image(path)
    assert im.mode == "RGB" and im.size == (40, 30)


def test_exif_orientation(tmp_path: Path) -> None:
    path = tmp_path / "rotated.jpg"
    stored = np.full((30, 40, 3), 128, dtype=np.uint8)
    stored[:10, :10] = (255, 0, 0)  # red block in the stored top-left corner
    exif = Image.Exif()
    exif[0x0112] = 6  # the stored image must be turned 90 degrees clockwise to display it
    Image.fromarray(stored).save(path, exif=exif, quality=95)
    out = np.asarray(load_image(path)).astype(int)
    assert out.shape == (40, 30, 3)
    red = (255, 0, 0)
    # turned clockwise, the top-left corner goes to the top-right; counter-clockwise, bottom-left
    assert np.abs(out[4, 25] - red).max() < 40, "the marked corner should be at the top right"
    for row, col in ((4, 4), (35, 4), (35, 25)):
        assert np.abs(out[row, col] - 128).max() < 40, f"({row}, {col}) should be gray"


@pytest.mark.parametrize(
    ("mode", "value", "expected"),
    [("L", 128, 128), ("1", 1, 255), ("I;16", 65535, 255), ("I;16", 32768, 128), ("F", None, None)],
)
def test_gray_modes(tmp_path: Path, mode: str, value: int | None, expected: int | None) -> None:
    if mode == "F":
        arr = np.linspace(-3.0, 5.0, 100, dtype=np.float32).reshape(10, 10)
        im = Image.fromarray(arr, mode="F")
        path = tmp_path / "f.tiff"
    else:
        im = Image.new(mode, (10, 10), value)
        path = tmp_path / f"g_{mode.replace(';', '')}.{'png' if mode != '1' else 'bmp'}"
    im.save(path)
    out = np.asarray(load_image(path))
    assert out.shape == (10, 10, 3)
    if expected is not None:
        assert abs(int(out[0, 0, 0]) - expected) <= 1
    else:
        assert out.min() == 0 and out.max() == 255


def test_rgba_composited_on_white(tmp_path: Path) -> None:
    path = tmp_path / "a.png"
    Image.new("RGBA", (5, 5), (255, 0, 0, 0)).save(path)
    assert tuple(np.asarray(load_image(path))[0, 0]) == (255, 255, 255)


def test_palette_with_transparency(tmp_path: Path) -> None:
    path = tmp_path / "p.png"
    im = Image.new("P", (4, 4), 1)
    im.putpalette([0, 0, 0, 10, 200, 30] + [0] * 762)
    im.info["transparency"] = 0
    im.save(path, transparency=0)
    assert tuple(np.asarray(load_image(path))[0, 0]) == (10, 200, 30)


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(ImageLoadError, match=r"nope\.jpg: no such file"):
        load_image(tmp_path / "nope.jpg")


def test_directory(tmp_path: Path) -> None:
    with pytest.raises(ImageLoadError, match="is a directory"):
        load_image(tmp_path)


def test_not_an_image(tmp_path: Path) -> None:
    path = tmp_path / "notes.jpg"
    path.write_text("hello")
    with pytest.raises(ImageLoadError, match=r"notes\.jpg: not an image"):
        load_image(path)


def test_truncated(tmp_path: Path) -> None:
    path = tmp_path / "cut.jpg"
    gradient_rgb(200, 200).save(path, quality=95)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(ImageLoadError, match=r"cut\.jpg: corrupt or truncated"):
        load_image(path)


@pytest.mark.parametrize("max_pixels", [10_000, 50_000])  # above twice the limit, and just above it
def test_decompression_bomb(tmp_path: Path, max_pixels: int) -> None:
    path = tmp_path / "big.png"
    Image.new("L", (300, 300)).save(path)
    with pytest.raises(
        ImageLoadError, match=rf"big\.png: 90,000 pixels, over the limit of {max_pixels:,} "
    ) as err:
        load_image(path, max_pixels=max_pixels)
    assert "limit" not in str(err.value).split(f"{max_pixels:,}", 1)[1]  # one limit quoted: ours
    assert str(2 * max_pixels) not in str(err.value)
    assert load_image(path, max_pixels=90_000).size == (300, 300)


def test_max_pixels_overrides_pillows_limit(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Raising ``max_pixels`` above Pillow's own limit works, lowering it below works, and Pillow's
    limit is left as it was afterwards (also after a refusal)."""
    path = tmp_path / "big.png"
    Image.new("L", (300, 300)).save(path)
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1_000)  # Pillow would refuse 90,000 pixels
    assert load_image(path, max_pixels=100_000).size == (300, 300)
    assert Image.MAX_IMAGE_PIXELS == 1_000
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 10**9)  # Pillow would accept it
    with pytest.raises(ImageLoadError, match="over the limit of 80,000 "):
        load_image(path, max_pixels=80_000)
    assert Image.MAX_IMAGE_PIXELS == 10**9


@pytest.mark.parametrize("bad", [0, -5, 2.5, True])
def test_max_pixels_must_be_positive(tmp_path: Path, bad: object) -> None:
    path = tmp_path / "a.png"
    gradient_rgb().save(path)
    with pytest.raises(ValueError, match="max_pixels must be a positive integer"):
        load_image(path, max_pixels=bad)  # type: ignore[arg-type]


def test_samples_ship_offline() -> None:
    for name in available_samples():
        im = load_sample(name)
        assert im.mode == "RGB" and min(im.size) >= 200
    with pytest.raises(KeyError, match="closest: chelsea"):
        load_sample("chelsee")


def test_preprocessing_round_trip() -> None:
    pre = Preprocessing(resize=256, crop=224)
    t = pre(gradient_rgb(400, 300))
    assert t.shape == (3, 224, 224)
    back = pre.denormalize(t)
    assert float(back.min()) >= 0 and float(back.max()) <= 1
    assert Preprocessing.from_dict(pre.to_dict()) == pre
    # the crop box covers the central square the model sees: side = 300 * 224 / 256
    left, top, right, bottom = pre.crop_box((400, 300))
    assert (right - left, bottom - top) == (262, 262) and left == 69
    with pytest.raises(ValueError, match="resize >= crop"):
        Preprocessing(resize=100, crop=224)


def test_unreadable_file_is_not_called_corrupt(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "locked.png"
    Image.new("RGB", (8, 8)).save(path)
    real_open = Image.open

    def denied(fp: object, *args: object, **kwargs: object) -> Image.Image:
        if Path(str(fp)) == path:  # chmod 000 does not stop root, who runs the tests
            raise PermissionError(13, "Permission denied", str(fp))
        return real_open(fp, *args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(Image, "open", denied)
    with pytest.raises(ImageLoadError, match=r"locked\.png: cannot be read \(permission denied\)$"):
        load_image(path)


def test_symlink_loop_and_dangling_link(tmp_path: Path) -> None:
    loop = tmp_path / "loop.png"
    loop.symlink_to(loop)
    with pytest.raises(ImageLoadError, match=r"loop\.png: a symlink loop"):
        load_image(loop)
    dangling = tmp_path / "dangling.png"
    dangling.symlink_to(tmp_path / "gone.png")
    with pytest.raises(ImageLoadError, match=r"dangling\.png: a symbolic link to a missing file"):
        load_image(dangling)
