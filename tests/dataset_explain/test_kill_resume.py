"""``cnnlens explain-dataset`` killed with SIGKILL at random moments, then rerun with the same command:
every image exactly once, and the same bytes as an uninterrupted run."""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
import zarr

from cnnlens.cli import main
from cnnlens.data.synthetic import SynthConfig, generate
from cnnlens.models import load_model

pytestmark = pytest.mark.slow  # several full commands in subprocesses

METHODS = ("gradcam", "saliency", "occlusion")


def command(data: Path, weights: Path, store: Path) -> list[str]:
    return [
        "explain-dataset", str(data / "manifest.csv"), "--model", "tinycnn", "--weights", str(weights),
        "-m", ",".join(METHODS), "-p", "window=8", "-p", "stride=4", "--batch-size", "4",
        "--workers", "0", "-o", str(store),
    ]  # fmt: skip


def run_and_kill(args: list[str], store: Path, rng: random.Random) -> bool:
    """Start the command, SIGKILL it at a random moment after its first batch; whether it was killed
    before it finished."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(Path(__file__).parents[2] / "src")}
    proc = subprocess.Popen(
        [sys.executable, "-m", "cnnlens", *args], env=env,
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    parts = store / "parts"
    deadline = time.monotonic() + 240
    before = len(list(parts.glob("*.parquet"))) if parts.is_dir() else 0
    while proc.poll() is None and time.monotonic() < deadline:
        if parts.is_dir() and len(list(parts.glob("*.parquet"))) > before:
            break
        time.sleep(0.01)
    time.sleep(rng.uniform(0.0, 0.6))
    killed = proc.poll() is None
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    return killed


def read(store: Path) -> tuple[bytes, dict[str, np.ndarray]]:
    group = zarr.open_group(str(store / "maps.zarr"), mode="r")
    return (store / "table.parquet").read_bytes(), {m: np.asarray(group[m][...]) for m in METHODS}


def test_killed_twice_then_resumed_equals_an_uninterrupted_run(tmp_path: Path) -> None:
    data = generate(tmp_path / "shapes", SynthConfig(classes=2, per_class=30, size=32)).parent
    torch.manual_seed(0)
    weights = tmp_path / "tiny.pt"
    torch.save(load_model("tinycnn", pretrained=False).module.state_dict(), weights)
    reference = tmp_path / "reference"
    assert main(command(data, weights, reference)) == 0
    store = tmp_path / "store"
    rng = random.Random(int(time.time()))
    kills = [run_and_kill(command(data, weights, store), store, rng) for _ in range(2)]
    assert any(kills), "the command finished before every kill; the test did not interrupt it"
    assert not (store / "summary.json").exists() or not kills[-1]
    done = len(list((store / "parts").glob("*.parquet")))
    assert 0 < done < 15 or not kills[-1]
    assert main(command(data, weights, store)) == 0
    table, maps = read(store)
    ref_table, ref_maps = read(reference)
    assert table == ref_table
    for m in METHODS:
        np.testing.assert_array_equal(maps[m], ref_maps[m])
        assert maps[m].tobytes() == ref_maps[m].tobytes()  # NaN-free and bit for bit
