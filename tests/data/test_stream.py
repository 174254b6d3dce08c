"""Streaming a dataset: every readable image once, in order, in batches; broken files reported."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from cnnlens.data.folders import Sample
from cnnlens.data.stream import stream_batches
from cnnlens.data.transforms import Preprocessing
from cnnlens.errors import InputError

PRE = Preprocessing(resize=None, crop=8, mean=(0.0, 0.0, 0.0), std=(1.0, 1.0, 1.0))


def _samples(tmp_path: Path, n: int, broken: frozenset[int] = frozenset()) -> list[Sample]:
    out = []
    for i in range(n):
        p = tmp_path / f"{i}.png"
        if i in broken:
            p.write_bytes(b"not a png")
        else:
            Image.fromarray(np.full((8, 8, 3), i, dtype=np.uint8)).save(p)
        out.append(Sample(p, i % 2))
    return out


@pytest.mark.parametrize("workers", [0, 2])
def test_each_readable_image_once_in_order_with_its_pixels(tmp_path: Path, workers: int) -> None:
    samples = _samples(tmp_path, 11, broken=frozenset({4}))
    batches = list(stream_batches(samples, PRE, batch_size=3, workers=workers))
    indices = torch.cat([b.indices for b in batches]).tolist()
    assert indices == [0, 1, 2, 3, 5, 6, 7, 8, 9, 10]
    values = torch.cat([b.inputs[:, 0, 0, 0] for b in batches]) * 255
    assert torch.allclose(values, torch.tensor(indices, dtype=torch.float32), atol=1e-3)
    assert torch.cat([b.labels for b in batches]).tolist() == [i % 2 for i in indices]
    failed = [f for b in batches for f in b.failed]
    assert [i for i, _ in failed] == [4] and "4.png" in failed[0][1]


def test_order_picks_and_checks_the_samples(tmp_path: Path) -> None:
    samples = _samples(tmp_path, 5)
    got = [int(i) for b in stream_batches(samples, PRE, batch_size=2, order=[4, 1]) for i in b.indices]
    assert got == [4, 1]
    with pytest.raises(InputError, match="index 7"):
        list(stream_batches(samples, PRE, order=[7]))
    with pytest.raises(InputError, match="batch_size"):
        list(stream_batches(samples, PRE, batch_size=0))
