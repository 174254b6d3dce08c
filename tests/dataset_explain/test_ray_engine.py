"""The Ray engine on a local Ray (2 CPUs): the same store as the local engine, byte for byte, even
when an actor is killed (SIGKILL) in the middle of a batch and Ray restarts it and retries."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
import torch
import zarr

from cnnlens.data.synthetic import SynthConfig, generate
from cnnlens.dataset_explain import Job, Recipe, explain_dataset
from cnnlens.dataset_explain.ray_engine import FAULT_ENV
from cnnlens.models import load_model

pytestmark = pytest.mark.slow  # Ray's start-up alone takes seconds

ray = pytest.importorskip("ray", reason="Ray is an optional extra (cnnlens[ray])")


@pytest.fixture
def local_ray(tmp_path: Path):  # type: ignore[no-untyped-def]
    marker = tmp_path / "killed-once"
    os.environ[FAULT_ENV] = f"1:{marker}"  # inherited by the workers of the Ray started below
    try:
        ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    except Exception as err:  # the sandbox may forbid what Ray needs (shared memory, sockets)
        pytest.skip(f"Ray cannot start here: {err}")
    finally:
        os.environ.pop(FAULT_ENV, None)
    yield marker
    ray.shutdown()


def test_ray_engine_equals_local_engine_after_a_worker_is_killed(tmp_path: Path, local_ray: Path) -> None:
    data = generate(tmp_path / "shapes", SynthConfig(classes=2, per_class=5, size=32)).parent
    torch.manual_seed(0)
    weights = tmp_path / "tiny.pt"
    torch.save(load_model("tinycnn", pretrained=False).module.state_dict(), weights)
    recipe = Recipe("tinycnn", str(weights), methods=(("gradcam", {}), ("saliency", {})))
    job = Job(data=str(data / "manifest.csv"), recipe=recipe, batch_size=4)
    local = explain_dataset(job, tmp_path / "local")
    remote = explain_dataset(job, tmp_path / "ray", engine="ray", ray_workers=2)
    assert local_ray.exists(), "the fault was not injected: the test did not kill an actor"
    assert remote["explained"] == local["explained"] == 10
    assert (tmp_path / "ray" / "table.parquet").read_bytes() == (
        tmp_path / "local" / "table.parquet"
    ).read_bytes()
    for m in ("gradcam", "saliency"):
        a = np.asarray(zarr.open_group(str(tmp_path / "local" / "maps.zarr"))[m][...])
        b = np.asarray(zarr.open_group(str(tmp_path / "ray" / "maps.zarr"))[m][...])
        assert a.tobytes() == b.tobytes()
