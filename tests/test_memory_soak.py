"""A test-sized memory soak (issue 16; the full one is bench/memory_soak.py): repeated explanations
do not grow resident memory, and the check does see a leak when one is planted."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType

import pytest
import torch

from cnnlens.data.transforms import Preprocessing
from cnnlens.models import LoadedModel
from tests.conftest import tiny_loaded

pytestmark = [
    pytest.mark.slow,  # ~150 explanations
    pytest.mark.skipif(not Path("/proc/self/statm").exists(), reason="reads RSS from /proc (Linux)"),
]

#: Allowed growth from warm-up to the end, in MiB: far below the planted leak (one 256 px input per
#: call, ~0.75 MiB, so ~45 MiB over the run) and above the allocator's noise.
TOLERANCE_MB = 12.0
CALLS = 60


def bench_module() -> ModuleType:
    path = Path(__file__).resolve().parents[1] / "bench" / "memory_soak.py"
    spec = importlib.util.spec_from_file_location("memory_soak", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def model() -> LoadedModel:
    """The tiny CNN on 256 px inputs, so that one leaked input per call is visible in RSS."""
    tiny = tiny_loaded()
    tiny.preprocessing = Preprocessing(resize=None, crop=256, mean=(0.5,) * 3, std=(0.25,) * 3)
    return tiny


@pytest.mark.parametrize(
    ("method", "params", "calls"), [("gradcam", {}, 60), ("occlusion", {"window": 128, "stride": 128}, 30)]
)
def test_repeated_explanations_keep_memory_flat(
    method: str, params: dict[str, int], calls: int, model: LoadedModel
) -> None:
    run = bench_module().soak(model, method, calls, every=5, warmup=0.2, **params)
    assert run.end_rss - run.warm_rss < TOLERANCE_MB, run.samples


def test_a_planted_leak_is_seen(model: LoadedModel) -> None:
    kept: list[torch.Tensor] = []

    def leak(explanation: object) -> None:
        kept.append(torch.randn(3, 256, 256))  # what a hook that kept its input would hold

    run = bench_module().soak(model, "gradcam", CALLS, every=5, warmup=0.2, on_call=leak)
    assert run.end_rss - run.warm_rss > TOLERANCE_MB, run.samples
