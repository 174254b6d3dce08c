"""Two runs into one --out do not corrupt each other, and no name from the data leaves --out (issue 16)."""

from __future__ import annotations

import multiprocessing
import multiprocessing.process
import os
import signal
import time
from multiprocessing.connection import Connection
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from cnnlens.cli import main
from cnnlens.errors import InputError
from cnnlens.outputs import LOCK_FILE, appender, output_lock, safe_name, subfolder


def _hold(folder: Path, conn: Connection) -> None:
    with output_lock(folder):
        conn.send("held")
        time.sleep(120)


def hold_lock(folder: Path) -> multiprocessing.process.BaseProcess:
    """A separate (forked) process that takes the lock of ``folder``, says so, and waits to be killed."""
    ctx = multiprocessing.get_context("fork")
    parent, child = ctx.Pipe()
    proc = ctx.Process(target=_hold, args=(folder, child))
    proc.start()
    assert parent.poll(30) and parent.recv() == "held"
    return proc


def kill(proc: multiprocessing.process.BaseProcess) -> None:
    """SIGKILL: no clean-up runs in the process, its lock file stays behind with its pid."""
    os.kill(proc.pid or 0, signal.SIGKILL)
    proc.join()


@pytest.fixture
def image(tmp_path: Path) -> Path:
    path = tmp_path / "cat.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (40, 40, 3), dtype=np.uint8)).save(path)
    return path


def explain(image: Path, out: Path) -> int:
    return main(["explain", str(image), "--model", "tinycnn", "-m", "saliency", "-o", str(out)])


def test_a_second_run_into_a_held_folder_is_refused_in_one_line(
    image: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "out"
    with output_lock(out):
        assert (out / LOCK_FILE).read_text().strip() == str(os.getpid())
        assert explain(image, out) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and "being written by another cnnlens run" in err
        assert f"pid {os.getpid()}" in err
        assert sorted(p.name for p in out.iterdir()) == [LOCK_FILE]  # nothing of the refused run
    assert not out.exists()  # the lock made the folder and nothing was written: it is gone again
    assert explain(image, out) == 0
    assert (out / "summary.json").is_file() and not (out / LOCK_FILE).exists()


def test_another_live_process_is_named_and_a_killed_ones_lock_is_taken_over(tmp_path: Path) -> None:
    out = tmp_path / "out"
    holder = hold_lock(out)
    try:
        with pytest.raises(InputError, match=f"another cnnlens run \\(pid {holder.pid}\\)"), output_lock(out):
            pass
    finally:
        kill(holder)
    assert (out / LOCK_FILE).read_text().strip() == str(holder.pid)
    with output_lock(out):  # the kernel released the dead process's flock: taken over
        assert (out / LOCK_FILE).read_text().strip() == str(os.getpid())
    assert not (out / LOCK_FILE).exists()


@pytest.mark.slow
def test_train_refuses_a_run_folder_another_process_holds(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    data = tmp_path / "data"
    for label in ("a", "b"):
        (data / label).mkdir(parents=True)
        for i in range(3):
            Image.new("RGB", (16, 16), (i * 80, 0, 0)).save(data / label / f"{i}.png")
    run = tmp_path / "run"
    holder = hold_lock(run)
    try:
        argv = ["train", str(data), "--model", "tinycnn", "--no-pretrained", "--epochs", "1",
                "--image-size", "16", "--split", "0.34,0.33,0.33", "--out", str(run)]  # fmt: skip
        assert main(argv) == 2
        assert f"pid {holder.pid}" in capsys.readouterr().err
    finally:
        kill(holder)
    assert sorted(p.name for p in run.iterdir()) == [LOCK_FILE]  # a stale lock, as kill -9 leaves it
    assert main(argv) == 0  # a stale lock is not "a folder that holds something else"
    assert (run / "best.pt").is_file() and not (run / LOCK_FILE).exists()


def test_a_link_planted_as_the_lock_is_not_followed(tmp_path: Path) -> None:
    victim = tmp_path / "victim.txt"
    victim.write_text("keep\n")
    out = tmp_path / "out"
    out.mkdir()
    (out / LOCK_FILE).symlink_to(victim)
    with output_lock(out):
        assert not (out / LOCK_FILE).is_symlink()
    assert victim.read_text() == "keep\n"


def test_appender_replaces_a_planted_link(tmp_path: Path) -> None:
    victim = tmp_path / "victim.txt"
    victim.write_text("keep\n")
    log = tmp_path / "out" / "results.jsonl"
    log.parent.mkdir()
    log.symlink_to(victim)
    with appender(log) as f:
        f.write(b"{}\n")
    with appender(log) as f:
        f.write(b"[]\n")
    assert victim.read_text() == "keep\n" and log.read_text() == "{}\n[]\n" and not log.is_symlink()


@pytest.mark.parametrize(
    "name", ["../x", "a/../../b", "/etc/passwd", "..", ".", "", ".hidden", "tab\tnl\nx", "a\\b"]
)
def test_names_from_data_stay_in_the_folder(name: str, tmp_path: Path) -> None:
    safe = safe_name(name)
    assert "/" not in safe and "\\" not in safe and not safe.startswith(".") and safe.isprintable()
    folder = subfolder(tmp_path, name)
    assert folder.parent == tmp_path and folder.is_dir()


def test_ordinary_names_are_kept() -> None:
    for name in ("cat", "Egyptian_cat", "resnet18-random", "caf\u00e9", "x.y-z"):
        assert safe_name(name) == name


def test_an_experiment_backbone_given_as_a_path_stays_under_runs() -> None:
    from cnnlens.training.experiment import Backbone, RunSpec

    for label in ("/abs/model.pt", "../up/model.pt:random"):
        spec = RunSpec(Backbone.parse(label), 0.0, None, 0)
        assert not spec.folder.is_absolute() and ".." not in spec.folder.parts


@pytest.mark.parametrize(
    "argv",
    [
        ["probe", "filters", "--model", "tinycnn", "--no-pretrained", "-o", "{out}"],
        [
            "hypothesis",
            "parts",
            "--model",
            "tinycnn",
            "--no-pretrained",
            "--grid",
            "2",
            "-o",
            "{out}",
            "{image}",
        ],
        [
            "explain-dataset",
            "--model",
            "tinycnn",
            "--no-pretrained",
            "-m",
            "saliency",
            "-o",
            "{out}",
            "{data}",
        ],
    ],
    ids=["probe", "hypothesis", "explain-dataset"],
)
def test_the_group_commands_hold_their_out_folder_too(
    argv: list[str], image: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out, data = tmp_path / "out", tmp_path / "data"
    for label in ("a", "b"):
        (data / label).mkdir(parents=True)
        (data / label / "x.png").write_bytes(image.read_bytes())
    words = [w.format(out=out, image=image, data=data) for w in argv]
    with output_lock(out):
        assert main(words) == 2
        assert "being written by another cnnlens run" in capsys.readouterr().err
        assert sorted(p.name for p in out.iterdir()) == [LOCK_FILE]
    assert main(words) == 0 and not (out / LOCK_FILE).exists()
