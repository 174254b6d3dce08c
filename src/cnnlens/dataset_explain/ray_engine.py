"""The Ray engine of ``cnnlens explain-dataset``: the same batches, explained by a pool of Ray Data
actors (one model per actor, one GPU per actor where the model's device is a GPU), written by this
process into the same store.

Each row of the Ray dataset is one store batch (its number); an actor decodes that batch's images,
explains them exactly as the local engine does (:func:`~cnnlens.dataset_explain.engine.explain_batch`)
and returns the rows and maps; the driver writes them (:meth:`Store.write_batch`), so the store never
needs to be shared between machines and a killed driver resumes like the local engine. An actor that
dies is restarted and its batch retried (``max_restarts=-1``, ``max_task_retries=-1``: Ray Data's
defaults for actor pools; passing them explicitly is deprecated since Ray 2.60). Were a batch's
result ever delivered twice, the second write puts the same bytes in the same chunks and part file.

Ray is an optional extra (``pip install 'cnnlens[ray]'``), imported only here and only when used.
"""

from __future__ import annotations

import logging
import os
import pickle
import signal
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from cnnlens.data.folders import ImageSet
from cnnlens.data.stream import stream_batches
from cnnlens.dataset_explain.store import Store
from cnnlens.errors import CnnlensError

#: Fault injection for the retry test: ``"BATCH:MARKER"`` makes the actor that gets batch ``BATCH``
#: kill its own process (SIGKILL) once, when the file ``MARKER`` does not exist yet (it creates it).
FAULT_ENV = "CNNLENS_RAY_FAULT"


class EngineUnavailableError(CnnlensError):
    """The chosen engine cannot run here (e.g. Ray is not installed)."""


def import_ray() -> Any:
    """The ``ray`` module with ``ray.data``, or one clear line saying how to install it."""
    try:
        import ray
        import ray.data
    except ImportError as err:
        raise EngineUnavailableError(
            f"--engine ray needs Ray Data ({err}); install it with: pip install 'cnnlens[ray]'"
        ) from None
    return ray


def _maybe_fail(batch: int) -> None:
    spec = os.environ.get(FAULT_ENV)
    if not spec:
        return
    which, _, marker = spec.partition(":")
    if int(which) == batch and not Path(marker).exists():
        Path(marker).touch()
        os.kill(os.getpid(), signal.SIGKILL)


class BatchExplainer:
    """A Ray Data actor: builds the model and methods once, then explains whole store batches."""

    def __init__(self, job: Any, data: ImageSet, target: int | str, count: int):
        self.job = job
        self.data = data
        self.target = target
        self.count = count
        self.model, self.methods = job.recipe.build()
        self.masks = any(s.mask is not None for s in data.samples)

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        from cnnlens.dataset_explain.engine import explain_batch

        out = []
        size = self.job.batch_size
        for b in batch["batch"]:
            b = int(b)
            _maybe_fail(b)
            order = range(b * size, min(self.count, (b + 1) * size))
            (streamed,) = stream_batches(
                self.data.samples, self.model.preprocessing, batch_size=size, workers=0,
                masks=self.masks, order=order,
            )  # fmt: skip
            rows, maps = explain_batch(
                self.model, self.methods, streamed, self.data.samples, self.data, self.target
            )
            out.append(pickle.dumps((b, rows, maps), protocol=pickle.HIGHEST_PROTOCOL))
        return {"payload": np.array(out, dtype=object)}


def run_ray(
    job: Any,
    data: ImageSet,
    target: int | str,
    store: Store,
    todo: Sequence[int],
    *,
    workers: int | None = None,
    advance: Callable[[int], None] | None = None,
) -> None:
    """Explain the batches ``todo`` on Ray Data actors and write them into ``store``.

    Connects to a running Ray (``ray.init()`` already called, or ``RAY_ADDRESS``), else starts a
    local one for this call and shuts it down afterwards.
    """
    ray = import_ray()
    context = ray.data.DataContext.get_current()
    context.enable_progress_bars = False  # the command shows its own
    logging.getLogger("ray.data").setLevel(logging.WARNING)
    started = False
    if not ray.is_initialized():
        ray.init(include_dashboard=False, log_to_driver=False, configure_logging=False)
        started = True
    try:
        device = job.recipe.device or "cpu"
        gpus = 1 if str(device).startswith("cuda") else 0
        resource = "GPU" if gpus else "CPU"
        size = workers or max(1, int(ray.available_resources().get(resource, 1)))
        ds = ray.data.from_items([{"batch": int(b)} for b in todo], override_num_blocks=len(todo))
        ds = ds.map_batches(
            BatchExplainer,
            batch_size=1,
            compute=ray.data.ActorPoolStrategy(size=size),
            fn_constructor_kwargs={"job": job, "data": data, "target": target, "count": store.layout.count},
            num_cpus=1,
            num_gpus=gpus,
        )  # Ray Data's actor pools restart dead actors and retry their tasks by default (-1: forever)
        for row in ds.iter_rows():
            b, rows, maps = pickle.loads(row["payload"])
            store.write_batch(b, rows, maps)
            if advance is not None:
                advance(len(rows))
    finally:
        if started:
            ray.shutdown()
