"""Indexing datasets: class folders, manifests, masks, splits and every kind of bad data."""

from __future__ import annotations

import json
import warnings
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from cnnlens.data.folders import UNLABELLED, ImageSet, class_weights, read_data, scan_dataset, warn_imbalance
from cnnlens.data.split import load_split, save_split, split_dataset, stratified_split
from cnnlens.errors import DataWarning, ImageLoadError


def _png(path: Path, size: tuple[int, int] = (12, 10), value: int = 100) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.full((size[1], size[0], 3), value, dtype=np.uint8)).save(path)
    return path


def _folder(root: Path, counts: dict[str, int]) -> Path:
    for name, n in counts.items():
        (root / name).mkdir(parents=True, exist_ok=True)
        for i in range(n):
            _png(root / name / f"{name}{i}.png", value=20 * i % 255)
    return root


def test_class_folders(tmp_path: Path) -> None:
    ds = scan_dataset(_folder(tmp_path, {"cat": 4, "dog": 3}))
    assert ds.class_names == ["cat", "dog"]
    assert ds.counts() == {"cat": 4, "dog": 3}
    assert ds.skipped == []
    assert ds.masked == 0


def test_empty_class_folder_is_left_out_with_a_warning(tmp_path: Path) -> None:
    root = _folder(tmp_path, {"a": 3, "b": 3})
    (root / "empty").mkdir()
    with pytest.warns(DataWarning, match="empty has no images"):
        ds = scan_dataset(root)
    assert ds.class_names == ["a", "b"]


def test_single_class_is_an_error(tmp_path: Path) -> None:
    root = _folder(tmp_path, {"only": 3})
    (root / "empty").mkdir()
    with pytest.warns(DataWarning), pytest.raises(ValueError, match="at least two classes"):
        scan_dataset(root)


def test_no_class_folders_or_missing_data(tmp_path: Path) -> None:
    _png(tmp_path / "loose.png")
    with pytest.raises(ValueError, match="no class subfolders"):
        scan_dataset(tmp_path)
    with pytest.raises(ValueError, match="no such dataset"):
        scan_dataset(tmp_path / "nope")


def test_corrupt_image_is_skipped_with_a_warning_or_an_error_under_strict(tmp_path: Path) -> None:
    root = _folder(tmp_path, {"a": 3, "b": 3})
    (root / "a" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n not really")
    with pytest.warns(DataWarning, match=r"broken\.png"):
        ds = scan_dataset(root)
    assert ds.counts() == {"a": 3, "b": 3}
    assert [Path(s["path"]).name for s in ds.skipped] == ["broken.png"]
    with pytest.raises(ImageLoadError, match=r"broken\.png.*--strict"):
        scan_dataset(root, strict=True)


def _broken(path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"\x89PNG\r\n\x1a\n not really")
    return path


def _assert_b_left_out(ds: ImageSet) -> None:
    assert ds.class_names == ["a", "c"]
    assert ds.counts() == {"a": 3, "c": 2}
    assert {s.path.stem[0]: s.label for s in ds.samples} == {"a": 0, "c": 1}
    assert sorted(Path(s["path"]).name for s in ds.skipped) == ["b0.png", "b1.png"]
    class_weights(list(ds.counts().values()))  # no class without images is left to break training


def test_class_whose_images_are_all_unreadable_is_left_out_and_labels_renumbered(tmp_path: Path) -> None:
    root = _folder(tmp_path, {"a": 3, "c": 2})
    for i in range(2):
        _broken(root / "b" / f"b{i}.png")
    with pytest.warns(DataWarning, match="class b has no readable images; left out"):
        ds = scan_dataset(root)
    _assert_b_left_out(ds)


def test_manifest_class_whose_images_are_all_unreadable_is_left_out(tmp_path: Path) -> None:
    rows = ["path,label"]
    for name, n in (("a", 3), ("b", 2), ("c", 2)):
        for i in range(n):
            image = tmp_path / "img" / f"{name}{i}.png"
            if name == "b":
                _broken(image)
            else:
                _png(image)
            rows.append(f"img/{name}{i}.png,{name}")
    (tmp_path / "m.csv").write_text("\n".join(rows) + "\n")
    with pytest.warns(DataWarning, match="class b has no readable images; left out"):
        ds = scan_dataset(tmp_path / "m.csv")
    _assert_b_left_out(ds)
    parts = split_dataset(ds, (0.6, 0.2, 0.2))
    assert sorted(s.label for v in parts.values() for s in v) == [0, 0, 0, 1, 1]


def test_only_one_class_readable_is_an_error_listing_the_empty_one(tmp_path: Path) -> None:
    root = _folder(tmp_path, {"a": 3})
    _broken(root / "b" / "b0.png")
    with pytest.warns(DataWarning), pytest.raises(ValueError, match=r"at least two classes.*b \(0\)"):
        scan_dataset(root)


def test_non_image_files_are_listed_and_skipped(tmp_path: Path) -> None:
    root = _folder(tmp_path, {"a": 3, "b": 3})
    (root / "b" / "notes.txt").write_text("hello")
    (root / "b" / ".DS_Store").write_bytes(b"\0")  # hidden files are ignored silently
    with pytest.warns(DataWarning, match=r"notes\.txt: not an image file"):
        ds = scan_dataset(root)
    assert len(ds.skipped) == 1
    with pytest.raises(ImageLoadError, match=r"notes\.txt"):
        scan_dataset(root, strict=True)


def test_mask_folder_matches_by_name_and_only_some_images_need_one(tmp_path: Path) -> None:
    root = _folder(tmp_path / "data", {"a": 3, "b": 3})
    _png(tmp_path / "masks" / "a0.png", value=255)
    _png(tmp_path / "masks" / "b2.png", value=0)
    ds = scan_dataset(root, masks=tmp_path / "masks")
    with_mask = {s.path.name: s.mask.name for s in ds.samples if s.mask is not None}
    assert with_mask == {"a0.png": "a0.png", "b2.png": "b2.png"}


def test_mask_of_another_size_is_an_error_naming_both(tmp_path: Path) -> None:
    root = _folder(tmp_path / "data", {"a": 3, "b": 3})
    _png(tmp_path / "masks" / "a1.png", size=(11, 10))
    with pytest.raises(ValueError, match=r"mask .*a1\.png is 11x10 but its image .*a1\.png is 12x10"):
        scan_dataset(root, masks=tmp_path / "masks")


def test_manifest_with_masks_and_splits(tmp_path: Path) -> None:
    for i in range(6):
        _png(tmp_path / "img" / f"x{i}.png")
    _png(tmp_path / "m" / "x0.png")
    splits = ["train", "train", "val", "val", "test", "test"]
    rows = ["path,label,mask,split"] + [
        f"img/x{i}.png,{'yes' if i % 2 else 'no'},{'m/x0.png' if i == 0 else ''},{s}"
        for i, s in enumerate(splits)
    ]
    (tmp_path / "data.csv").write_text("\n".join(rows) + "\n")
    ds = scan_dataset(tmp_path / "data.csv")
    assert ds.class_names == ["no", "yes"]
    assert ds.masked == 1
    parts = split_dataset(ds)
    assert [len(parts[k]) for k in ("train", "val", "test")] == [2, 2, 2]


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("file,class\na.png,x\n", "header columns path,label"),
        ("path,label\na.png,\n", "line 2: empty label"),
        ("path,label,split\na.png,x,holdout\n", "split 'holdout' is not one of"),
    ],
)
def test_bad_manifests(tmp_path: Path, text: str, message: str) -> None:
    (tmp_path / "m.csv").write_text(text)
    with pytest.raises(ValueError, match=message):
        scan_dataset(tmp_path / "m.csv")


def test_imbalance_warning_and_balanced_class_weights() -> None:
    from sklearn.utils.class_weight import compute_class_weight

    with pytest.warns(DataWarning, match="imbalanced classes: a has 40 images, b has 5"):
        assert warn_imbalance({"a": 40, "b": 5, "c": 12})
    assert not warn_imbalance({"a": 10, "b": 5})
    labels = np.array([0] * 40 + [1] * 5 + [2] * 12)
    expected = compute_class_weight("balanced", classes=np.arange(3), y=labels)
    np.testing.assert_allclose(class_weights([40, 5, 12]).numpy(), expected, rtol=1e-6)
    with pytest.raises(ValueError, match="at least one training image"):
        class_weights([3, 0])


def test_stratified_split_keeps_proportions_and_is_seeded() -> None:
    labels = [0] * 50 + [1] * 20 + [2] * 3
    parts = stratified_split(labels, seed=3)
    everything = sorted(i for v in parts.values() for i in v)
    assert everything == list(range(len(labels)))  # disjoint and complete
    per = {k: Counter(labels[i] for i in v) for k, v in parts.items()}
    assert per["val"] == Counter({0: 5, 1: 2, 2: 1})
    assert per["test"] == Counter({0: 5, 1: 2, 2: 1})
    assert stratified_split(labels, seed=3) == parts
    assert stratified_split(labels, seed=4) != parts
    with pytest.raises(ValueError, match="summing to 1"):
        stratified_split(labels, (0.5, 0.1, 0.1))


def test_split_file_round_trip(tmp_path: Path) -> None:
    ds = scan_dataset(_folder(tmp_path / "d", {"a": 10, "b": 10}))
    parts = split_dataset(ds, seed=1)
    save_split(parts, ds, tmp_path / "split.json")
    assert load_split(ds, tmp_path / "split.json") == parts
    (ds.samples[0].path).unlink()
    smaller = scan_dataset(tmp_path / "d")
    with pytest.raises(ValueError, match="not in the dataset any more"):
        load_split(smaller, tmp_path / "split.json")


# -- read_data: what a DATA argument names -------------------------------------------------------


def test_a_plain_folder_reads_its_images_folder_with_the_masks_beside_it(tmp_path: Path) -> None:
    for name in ("a/one.png", "b/two.jpg", "b/.hidden.png"):
        _png(tmp_path / "images" / name)
    (tmp_path / "images" / "b" / "notes.txt").write_text("not an image")
    _png(tmp_path / "masks" / "one.png")
    ds = read_data(tmp_path, labelled=False)
    assert ds.root == tmp_path / "images" and ds.class_names == []
    assert [(s.path.name, s.label, s.mask) for s in ds.samples] == [
        ("one.png", UNLABELLED, tmp_path / "masks" / "one.png"),
        ("two.jpg", UNLABELLED, None),
    ]


def test_a_folder_without_images_is_read_recursively_but_never_its_masks(tmp_path: Path) -> None:
    _folder(tmp_path, {"cat": 2, "dog": 1})
    _png(tmp_path / "masks" / "cat0.png")
    ds = read_data(tmp_path, labelled=False)
    assert [s.path.relative_to(tmp_path).as_posix() for s in ds.samples] == [
        "cat/cat0.png",
        "cat/cat1.png",
        "dog/dog0.png",
    ]
    assert [s.mask is not None for s in ds.samples] == [True, False, False]
    labelled = read_data(tmp_path)
    assert labelled.class_names == ["cat", "dog", "masks"]  # a class-folder dataset has no masks/ convention


def _manifest(root: Path, rows: list[str]) -> Path:
    for row in rows:
        _png(root / row.split(",")[0])
    path = root / "manifest.csv"
    path.write_text("path,label,split\n" + "".join(f"{r}\n" for r in rows))
    return path


def test_a_split_keeps_its_manifest_rows_of_a_file_or_a_folder(tmp_path: Path) -> None:
    path = _manifest(tmp_path, ["x.png,a,train", "y.png,b,test", "z.png,a,test"])
    assert [s.path.name for s in read_data(path, labelled=False).samples] == ["x.png", "y.png", "z.png"]
    for data in (path, tmp_path):
        ds = read_data(data, labelled=False, split="test")
        assert ds.root == tmp_path and [s.path.name for s in ds.samples] == ["y.png", "z.png"]
    with pytest.raises(ValueError, match=r"no row has split 'val' \(splits present: test, train\)"):
        read_data(path, split="val")
    with pytest.raises(ValueError, match="split must be one of train, val, test, got 'testing'"):
        read_data(path, split="testing")


def test_read_data_errors(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="missing: no such file or folder"):
        read_data(tmp_path / "missing")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="empty: no image files in this folder or below it"):
        read_data(tmp_path / "empty", labelled=False)
    with pytest.raises(ValueError, match=r"selects rows of a manifest, but there is no .*manifest\.csv"):
        read_data(tmp_path / "empty", split="test")
    (tmp_path / "empty.csv").write_text("path,label\n")
    with pytest.raises(ValueError, match="the manifest lists no image"):
        read_data(tmp_path / "empty.csv")
    _png(tmp_path / "images" / "a.png")
    with pytest.raises(ValueError, match=r"a plain folder of images has its masks in .*masks"):
        read_data(tmp_path, labelled=False, masks=tmp_path / "images")


def test_unreadable_class_folder_is_an_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A class folder that cannot be listed is an error, not a class silently left out."""
    import os

    from cnnlens.errors import InputError

    root = _folder(tmp_path, {"a": 3, "b": 3, "c": 3})
    locked = root / "b"
    real_scandir = os.scandir

    def scandir(path: object = ".") -> object:
        if Path(str(path)) == locked:  # chmod 000 does not stop root, who runs the tests
            raise PermissionError(13, "Permission denied", str(path))
        return real_scandir(path)  # type: ignore[arg-type]

    monkeypatch.setattr(os, "scandir", scandir)
    with pytest.raises(InputError, match=r"/b: cannot be read \(permission denied\)"):
        scan_dataset(root)


def test_manifest_that_is_not_utf8_is_named(tmp_path: Path) -> None:
    from cnnlens.errors import InputError

    manifest = tmp_path / "m.csv"
    manifest.write_bytes("path,label\nchat.png,caf\xe9\n".encode("latin-1"))
    with pytest.raises(InputError, match=r"m\.csv: not UTF-8 text \(byte 0xe9 at offset 23\); save"):
        scan_dataset(manifest)


def test_malformed_run_config_is_named(tmp_path: Path) -> None:
    from cnnlens.data.split import run_split
    from cnnlens.errors import InputError

    run = tmp_path / "run"
    run.mkdir()
    (run / "config.json").write_text('{"data": "x",')
    (run / "split.json").write_text("{}")
    with pytest.raises(InputError, match=r"run/config\.json: not valid JSON \(.* at line 1, column 14\)"):
        run_split(run, "val")
    data = _folder(tmp_path / "data", {"a": 2, "b": 2})
    (run / "config.json").write_text(json.dumps({"data": str(data)}))
    (run / "split.json").write_bytes(b"\xff\xfe")
    with pytest.raises(InputError, match=r"run/split\.json: not UTF-8 text"):
        run_split(run, "val")


def test_a_synth_folder_read_as_class_folders_says_to_give_its_manifest(tmp_path: Path) -> None:
    """``cnnlens data synth`` writes images/, masks/ and manifest.csv: the folder itself reads as two
    classes, images and masks, which the warning names with the manifest to give instead."""
    from cnnlens.data.synthetic import SynthConfig, generate

    manifest = generate(tmp_path / "shapes", SynthConfig(classes=2, per_class=4, size=32))
    root = tmp_path / "shapes"
    said = r"has a manifest.csv but was read as class folders \(images, masks\)"
    with pytest.warns(DataWarning, match=said):
        wrong = read_data(root)
    assert wrong.class_names == ["images", "masks"]
    assert read_data(manifest).class_names == ["circle", "triangle"]
    plain = _folder(tmp_path / "plain", {"a": 2, "b": 2})
    (plain / "manifest.csv").write_text("path,label\na/0.png,a\nb/0.png,b\n")  # folders and manifest agree
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # not a synth folder: no warning
        assert read_data(plain).class_names == ["a", "b"]
