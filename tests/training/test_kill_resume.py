"""kill -9 during training, then --resume, again and again (issue 16): a killed checkpoint write
leaves the old file or the new one, never a torn one, and the run ends complete and loadable with
the weights of a run that was never interrupted."""

from __future__ import annotations

import json
import multiprocessing
import os
import random
import signal
import time
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

import pytest
import torch
from PIL import Image

from cnnlens.cli import main
from cnnlens.models import load_model

pytestmark = pytest.mark.slow  # forks five training processes and trains twice

EPOCHS = 4


def train_argv(data: Path, run: Path) -> list[str]:
    return ["train", str(data), "--model", "tinycnn", "--no-pretrained", "--freeze", "none",
            "--epochs", str(EPOCHS), "--image-size", "16", "--batch-size", "4", "--augment", "none",
            "--split", "0.5,0.25,0.25", "--seed", "3", "--out", str(run)]  # fmt: skip


def child(argv: list[str], conn: Connection, stall_at: int) -> None:
    """Run ``cnnlens`` in a forked process; its ``stall_at``-th checkpoint write (0: none) stops
    after its bytes are in the temporary file and before the rename, says so, and waits to be killed."""
    real = torch.save
    writes = 0

    def stalled_save(obj: Any, f: Any, *args: Any, **kwargs: Any) -> None:
        nonlocal writes
        real(obj, f, *args, **kwargs)
        writes += 1
        if writes == stall_at:
            conn.send("writing")
            time.sleep(60)

    torch.save = stalled_save  # type: ignore[assignment]
    os._exit(main(argv))


def run_and_kill(argv: list[str], *, stall: bool, nth_write: int, delay: float) -> int | None:
    """Fork ``cnnlens argv``; kill it with SIGKILL in its ``nth_write``-th checkpoint write (``stall``)
    or ``delay`` seconds after it starts. Returns its exit code if it ended on its own first."""
    ctx = multiprocessing.get_context("fork")
    parent, child_end = ctx.Pipe()
    proc = ctx.Process(target=child, args=(argv, child_end, nth_write if stall else 0))
    proc.start()
    if stall:
        assert parent.poll(60), "no checkpoint write within 60 s"
    else:
        proc.join(delay)
    if proc.is_alive():
        os.kill(proc.pid or 0, signal.SIGKILL)
        proc.join()
        return None
    return proc.exitcode


def test_kill_during_checkpoint_writes_and_resume(tmp_path: Path) -> None:
    data = tmp_path / "data"
    rng = random.Random(0)
    for label in ("a", "b"):
        (data / label).mkdir(parents=True)
        for i in range(8):
            color = (200 * (label == "a"), rng.randrange(256), 40 * i)
            Image.new("RGB", (16, 16), color).save(data / label / f"{i}.png")
    run = tmp_path / "run"
    kills = 0
    argv = train_argv(data, run)
    for attempt in range(5):  # 4 kills inside a checkpoint write, 1 at a random moment
        stall = attempt < 4
        code = run_and_kill(argv, stall=stall, nth_write=rng.randint(1, 3), delay=rng.uniform(0.2, 1.5))
        kills += code is None
        assert code in (None, 0)
        for pt in run.glob("*.pt"):  # the old file or the new one, never a torn one
            torch.load(pt, weights_only=True)
        argv = ["train", "--resume", str(run)]
    assert kills >= 4
    assert main(["train", "--resume", str(run)]) == 0
    history = json.loads((run / "history.json").read_text())
    assert [h["epoch"] for h in history] == list(range(1, EPOCHS + 1))
    assert not [p.name for p in run.iterdir() if p.name.endswith(".tmp")]  # stale .tmp files cleaned
    resumed = load_model(str(run)).module.state_dict()

    assert main(train_argv(data, tmp_path / "straight")) == 0  # never interrupted
    straight = load_model(str(tmp_path / "straight")).module.state_dict()
    assert all(torch.equal(resumed[k], straight[k]) for k in straight)
