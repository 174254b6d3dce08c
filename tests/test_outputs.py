"""The safe writers of cnnlens.outputs and the explain pipeline's files written through them."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import IO

import numpy as np
import pytest
from PIL import Image

from cnnlens.attribution import create
from cnnlens.errors import InputError
from cnnlens.outputs import (
    clean_stale_tmp,
    output_folder,
    write_bytes,
    write_json,
    write_text,
    write_with,
)
from cnnlens.pipeline import explain_images, summarize, write_summary
from tests.conftest import tiny_loaded


def planted_link(tmp_path: Path, name: str) -> tuple[Path, Path]:
    """An output folder whose ``name`` is a symbolic link to a file outside it."""
    victim = tmp_path / "victim.txt"
    victim.write_text("precious")
    out = tmp_path / "out"
    out.mkdir(exist_ok=True)
    os.symlink(Path("..") / "victim.txt", out / name)
    return out, victim


@pytest.mark.parametrize(
    "write",
    [
        lambda p: write_text(p, "new"),
        lambda p: write_bytes(p, b"new"),
        lambda p: write_json(p, {"new": 1}),
    ],
    ids=["text", "bytes", "json"],
)
def test_writers_replace_a_symlink_never_its_target(tmp_path: Path, write: object) -> None:
    out, victim = planted_link(tmp_path, "file.json")
    write(out / "file.json")  # type: ignore[operator]
    assert victim.read_text() == "precious"
    assert not (out / "file.json").is_symlink()
    assert "new" in (out / "file.json").read_text()
    assert [p.name for p in out.iterdir()] == ["file.json"]  # no temporary file left


def test_a_failed_write_keeps_the_old_file_and_leaves_no_tmp(tmp_path: Path) -> None:
    path = tmp_path / "a.json"
    write_text(path, "old")

    def killed(f: IO[bytes]) -> None:
        f.write(b"half")
        raise RuntimeError("killed")

    with pytest.raises(RuntimeError, match="killed"):
        write_with(path, killed)
    assert path.read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["a.json"]


def test_clean_stale_tmp_removes_only_the_writers_temporary_files(tmp_path: Path) -> None:
    stale = [".last.pt.abc123.tmp", ".config.json.tmp", ".config.json.x_y.tmp"]
    kept = ["last.pt", ".other.pt.abc.tmp", "notes.tmp", ".last.pt.keep", "last.pt.abc.tmp"]
    for name in stale + kept:
        (tmp_path / name).write_text("x")
    removed = clean_stale_tmp(tmp_path, ["last.pt", "config.json"])
    assert sorted(p.name for p in removed) == sorted(stale)
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(kept)


def test_output_folder_refuses_a_file_in_one_line(tmp_path: Path) -> None:
    (tmp_path / "afile").write_text("x")
    with pytest.raises(InputError, match=r"--out .*afile is a file, not a folder"):
        output_folder(tmp_path / "afile")
    with pytest.raises(InputError, match="a parent is a file"):
        output_folder(tmp_path / "afile" / "sub")
    assert output_folder(tmp_path / "new" / "sub").is_dir()


def explain_one(out: Path, stem: str = "cat", seed: int = 0) -> list:  # type: ignore[type-arg]
    model = tiny_loaded()
    rng = np.random.default_rng(seed)
    image = Image.fromarray(rng.integers(0, 255, (32, 32, 3), dtype=np.uint8))
    return explain_images(model, [(stem, f"{stem}.png", image)], [create("saliency", model)], out)


@pytest.mark.parametrize("name", ["saliency.npz", "saliency.png"])
def test_explain_files_do_not_follow_planted_symlinks(tmp_path: Path, name: str) -> None:
    out = tmp_path / "out"
    (out / "cat").mkdir(parents=True)
    victim = tmp_path / "victim.txt"
    victim.write_text("precious")
    os.symlink(Path("..") / ".." / "victim.txt", out / "cat" / name)
    explain_one(out)
    assert victim.read_text() == "precious"
    assert not (out / "cat" / name).is_symlink()


def test_summary_does_not_follow_a_planted_symlink(tmp_path: Path) -> None:
    out, victim = planted_link(tmp_path, "summary.json")
    results = explain_one(out)
    write_summary(summarize(tiny_loaded(), results, [], out), out)
    assert victim.read_text() == "precious"
    assert not (out / "summary.json").is_symlink()
    assert json.loads((out / "summary.json").read_text())["images"][0]["stem"] == "cat"


def test_summary_is_merged_with_an_earlier_run(tmp_path: Path) -> None:
    out = tmp_path / "out"
    model = tiny_loaded()
    write_summary(summarize(model, explain_one(out, "cat"), [{"path": "dog.png", "error": "x"}], out), out)
    write_summary(summarize(model, explain_one(out, "bird"), [], out), out)
    summary = json.loads((out / "summary.json").read_text())
    assert [e["stem"] for e in summary["images"]] == ["cat", "bird"]
    assert summary["errors"] == [{"path": "dog.png", "error": "x"}]
    assert all(e["model"]["name"] == "tiny" for e in summary["images"])
    # the same image again: its entry is replaced, not duplicated; a new read of dog.png clears its error
    again = summarize(model, explain_one(out, "cat", seed=1), [{"path": "dog.png", "error": "y"}], out)
    write_summary(again, out)
    summary = json.loads((out / "summary.json").read_text())
    assert [e["stem"] for e in summary["images"]] == ["bird", "cat"]
    assert summary["errors"] == [{"path": "dog.png", "error": "y"}]


def test_an_unreadable_summary_is_replaced(tmp_path: Path) -> None:
    out = tmp_path / "out"
    out.mkdir()
    (out / "summary.json").write_text("{not json")
    write_summary(summarize(tiny_loaded(), explain_one(out), [], out), out)
    assert [e["stem"] for e in json.loads((out / "summary.json").read_text())["images"]] == ["cat"]


def test_written_files_get_the_mode_open_would_give(tmp_path: Path) -> None:
    from cnnlens import outputs

    plain = tmp_path / "plain.txt"
    plain.write_text("x")
    written = outputs.write_text(tmp_path / "atomic.txt", "x")
    assert (written.stat().st_mode & 0o777) == (plain.stat().st_mode & 0o777) == outputs.FILE_MODE


def test_a_link_to_a_folder_planted_in_out_is_replaced_not_written_through(tmp_path: Path) -> None:
    from cnnlens import outputs

    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    out = tmp_path / "out"
    out.mkdir()
    os.symlink(elsewhere, out / "chelsea")
    folder = outputs.subfolder(out, "chelsea")
    outputs.write_text(folder / "gradcam.json", "{}")
    assert folder.is_dir() and not folder.is_symlink() and (out / "chelsea" / "gradcam.json").is_file()
    assert list(elsewhere.iterdir()) == []
    assert outputs.subfolder(out, "..").parent == out and outputs.subfolder(out, "a/b").parent == out
