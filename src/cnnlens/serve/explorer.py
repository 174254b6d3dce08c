"""The explorer's state, without the web: models, images, a job queue and a result cache.

One or two models (``A`` and ``B``, compared side by side). One worker thread runs the explanations
of both one after another (a model is shared: an attribution method hooks it for the length of a
call), so any number of browsers can queue jobs at once. A job counts its model's forward passes (a
forward hook installed for the length of the job), which gives its progress, and is cancelled by
raising :class:`Cancelled` from that hook at the next pass; the method's own ``with`` blocks put the
model back as it was. Results are cached by (model, image, method, target, layer, parameters).
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
import threading
import time
import uuid
from collections import OrderedDict
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from torch import nn

from cnnlens.attribution import create, get_method, method_names
from cnnlens.attribution.core.explanation import _view
from cnnlens.data.images import load_image
from cnnlens.errors import CnnlensError, InputError, UnknownNameError, closest
from cnnlens.models.loaded import LoadedModel
from cnnlens.viz.overlay import ColorScale, choose_scale

#: The labels of the explorer's models, in order (at most two models).
LABELS = ("A", "B")

#: Image file suffixes listed from ``--data``.
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp")


class Cancelled(Exception):  # noqa: N818 - not an error: the user asked for it
    """Raised inside a job's forward hook when the job was cancelled."""


@dataclass(frozen=True)
class Limits:
    """What an upload may be: at most ``max_bytes`` bytes and ``max_pixels`` pixels."""

    max_bytes: int = 8 * 1024 * 1024
    max_pixels: int = 40_000_000
    max_data_images: int = 2000


@dataclass
class StoredImage:
    id: str
    name: str
    image: Image.Image
    tops: list[list[tuple[int, str, float]]]  # the top-5 of each model

    @property
    def top(self) -> list[tuple[int, str, float]]:
        """The first model's top-5."""
        return self.tops[0]


@dataclass
class Result:
    """One computed map (at the model's input resolution) and what made it."""

    key: str
    method: str
    target: int
    target_name: str
    score: float
    layer: str | None
    seconds: float
    attribution: np.ndarray
    image_id: str
    model: int = 0

    def info(self) -> dict[str, Any]:
        scale = choose_scale(self.attribution)
        return {
            "key": self.key,
            "model": self.model,
            "model_label": LABELS[self.model],
            "method": self.method,
            "target": self.target,
            "target_name": self.target_name,
            "score": round(self.score, 6),
            "layer": self.layer,
            "seconds": round(self.seconds, 4),
            "scale": scale_info(scale),
        }


def scale_info(scale: ColorScale) -> dict[str, Any]:
    return {**scale.to_dict(), "gradient": scale.css_gradient(), "ticks": scale.ticks()}


@dataclass
class Job:
    id: str
    key: str
    spec: dict[str, Any]
    status: str = "queued"  # queued, running, done, error, cancelled
    passes: int = 0
    expected: int | None = None
    error: str | None = None
    started: float | None = None
    cancel: threading.Event = field(default_factory=threading.Event)

    def info(self) -> dict[str, Any]:
        fraction = None
        if self.status == "done":
            fraction = 1.0
        elif self.expected:
            fraction = min(0.99, self.passes / self.expected)
        return {
            "id": self.id,
            "key": self.key,
            "status": self.status,
            "passes": self.passes,
            "expected_passes": self.expected,
            "progress": fraction,
            "elapsed": round(time.monotonic() - self.started, 2) if self.started else 0.0,
            "error": self.error,
            "method": self.spec["method"],
            "model": self.spec["model"],
        }


class Explorer:
    """Models, images, jobs and results of one explorer server.

    Args:
        model: The classifier to explore, or two (``[A, B]``) to compare: each keeps its own
            preprocessing, classes, layers and methods; jobs name the model they run on.
        data: A folder of images to pick from (searched recursively), or ``None``.
        limits: Upload limits.
        cache_size: Results kept (least recently used dropped first).
    """

    def __init__(
        self,
        model: LoadedModel | Sequence[LoadedModel],
        data: str | os.PathLike[str] | None = None,
        *,
        limits: Limits | None = None,
        cache_size: int = 256,
    ) -> None:
        self.models = [model] if isinstance(model, LoadedModel) else list(model)
        if not 1 <= len(self.models) <= len(LABELS):
            raise InputError(f"the explorer takes one or two models, got {len(self.models)}")
        self.limits = limits or Limits()
        self.data = Path(data) if data is not None else None
        if self.data is not None and not self.data.is_dir():
            raise InputError(f"--data {self.data} is not a folder of images")
        self.cache_size = cache_size
        self.images: OrderedDict[str, StoredImage] = OrderedDict()
        self.results: OrderedDict[str, Result] = OrderedDict()
        self.jobs: dict[str, Job] = {}
        self.pass_counts: dict[str, int] = {}
        self._lock = threading.Lock()  # the model: one user of it at a time
        self._state = threading.Lock()  # the dictionaries above
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="cnnlens-job")
        self._data_names = self._scan_data()

    # ------------------------------------------------------------------ model and data
    @property
    def model(self) -> LoadedModel:
        """The first model (``A``)."""
        return self.models[0]

    def get_model(self, index: int) -> LoadedModel:
        """Model ``index`` (0 for ``A``, 1 for ``B``)."""
        if isinstance(index, bool) or not isinstance(index, int) or not 0 <= index < len(self.models):
            known = ", ".join(f"{i} ({LABELS[i]})" for i in range(len(self.models)))
            raise InputError(f"model must be one of {known}, got {index!r}")
        return self.models[index]

    def model_info(self, index: int) -> dict[str, Any]:
        """What the page needs of model ``index``: names, classes, layers and the methods it takes."""
        m = self.get_model(index)
        methods = [
            {"name": n, "family": get_method(n).family, "uses_layer": get_method(n).uses_layer}
            for n in method_names()
            if get_method(n).unsupported(m.module) is None
        ]
        layers = [
            layer.name
            for layer in m.layer_table
            if layer.name
            and layer.output_shape is not None
            and len(layer.output_shape) == 3
            and layer.output_shape[1] * layer.output_shape[2] > 1  # a feature map, not a pooled vector
        ]
        return {
            "index": index,
            "label": LABELS[index],
            "name": m.name,
            "arch": m.arch,
            "source": m.source,
            "classes": m.num_classes,
            "class_names": m.class_names,
            "input_size": list(m.preprocessing.input_size),
            "default_layer": m.default_layer,
            "layers": layers,
            "methods": methods,
        }

    def info(self) -> dict[str, Any]:
        """Every model (``models``; the first one's facts also at the top level), the images of
        ``--data`` and the upload limits."""
        models = [self.model_info(i) for i in range(len(self.models))]
        first = models[0]
        return {
            "model": {k: first[k] for k in ("name", "arch", "source", "classes")},
            **{k: first[k] for k in ("class_names", "input_size", "default_layer", "layers", "methods")},
            "models": models,
            "data": self._data_names,
            "limits": {"max_bytes": self.limits.max_bytes, "max_pixels": self.limits.max_pixels},
        }

    def _scan_data(self) -> list[str]:
        if self.data is None:
            return []
        names = []
        for p in sorted(self.data.rglob("*")):
            if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file() and not p.is_symlink():
                names.append(p.relative_to(self.data).as_posix())
                if len(names) >= self.limits.max_data_images:
                    break
        return names

    def add_upload(self, data: bytes, name: str) -> StoredImage:
        """An uploaded file, checked against the limits and decoded as an image."""
        if len(data) > self.limits.max_bytes:
            raise InputError(
                f"{name}: the file is larger than the limit of {self.limits.max_bytes / 2**20:.0f} MB"
            )
        if not data:
            raise InputError(f"{name}: the file is empty")
        with tempfile.TemporaryDirectory(prefix="cnnlens-upload-") as tmp:
            path = Path(tmp) / "upload"
            path.write_bytes(data)
            try:
                image = load_image(path, max_pixels=self.limits.max_pixels)
            except CnnlensError as err:
                message = str(err).replace(str(path), name)
                raise InputError(message) from None
        return self._store(image, name, hashlib.sha256(data).hexdigest()[:16])

    def add_data_image(self, name: str) -> StoredImage:
        """An image of ``--data`` by its listed name (no other path is accepted)."""
        if self.data is None or name not in self._data_names:
            raise InputError(f"{name!r} is not one of the images of --data")
        path = self.data / name
        data = path.read_bytes()
        image = load_image(path, max_pixels=self.limits.max_pixels)
        return self._store(image, name, hashlib.sha256(data).hexdigest()[:16])

    def _store(self, image: Image.Image, name: str, digest: str) -> StoredImage:
        with self._lock:
            tops = [m.top_k(m.prepare(image), min(5, m.num_classes))[0] for m in self.models]
        stored = StoredImage(digest, name, image, tops)
        with self._state:
            self.images[digest] = stored
            self.images.move_to_end(digest)
            while len(self.images) > self.cache_size:
                self.images.popitem(last=False)
        return stored

    def image(self, image_id: str) -> StoredImage:
        with self._state:
            stored = self.images.get(image_id)
        if stored is None:
            raise KeyError(f"no image {image_id!r}: upload or pick it again")
        return stored

    def view(self, image_id: str, max_side: int = 384, model: int = 0) -> Image.Image:
        """The part of the image that model ``model`` sees (its own resize and crop)."""
        pre = self.get_model(model).preprocessing
        return _view(self.image(image_id).image, pre, max_side).convert("RGB")

    # ------------------------------------------------------------------ jobs
    def result_key(self, spec: dict[str, Any]) -> str:
        """The cache key of a job: model, image, method, target, layer and parameters."""
        model = self.models[spec["model"]]
        body = json.dumps(
            [
                spec["model"],  # two models may share a name and source (random weights)
                model.name,
                model.source,
                spec["image"],
                spec["method"],
                spec.get("target"),
                spec.get("layer"),
                spec.get("params") or {},
            ],
            sort_keys=True,
            default=str,
        )
        return hashlib.sha256(body.encode()).hexdigest()[:24]

    def submit(
        self,
        image: str,
        method: str,
        target: int | str | None = None,
        layer: str | None = None,
        params: dict[str, Any] | None = None,
        model: int = 0,
    ) -> Job:
        """Queue a job (or return a finished one at once when its result is cached).

        ``target`` is a class index or name of model ``model`` (``None``: its top class); two models
        with different class sets are compared by naming the class.
        """
        lm = self.get_model(model)
        stored = self.image(image)
        cls = get_method(method)  # an unknown name: UnknownNameError with the closest names
        why = cls.unsupported(lm.module)
        if why is not None:
            raise InputError(f"{method} cannot explain model {LABELS[model]} ({lm.name}): {why}")
        index = stored.tops[model][0][0] if target is None else self._target(model, target)
        if layer and not cls.uses_layer:
            layer = None
        if layer:
            lm.layer(layer)  # an unknown layer: the closest names suggested
        params = dict(params or {})
        spec = {
            "model": model,
            "image": image,
            "method": method,
            "target": index,
            "layer": layer or None,
            "params": params,
        }
        method_obj = self._build(spec)  # bad parameters fail here, in the request
        key = self.result_key(spec)
        job = Job(uuid.uuid4().hex[:12], key, spec, expected=self.pass_counts.get(self._cost_key(spec)))
        with self._state:
            self.jobs[job.id] = job
            if len(self.jobs) > 4 * self.cache_size:  # forget the oldest finished jobs
                for old in [j for j in self.jobs.values() if j.status in ("done", "error", "cancelled")][
                    : len(self.jobs) - 2 * self.cache_size
                ]:
                    del self.jobs[old.id]
            if key in self.results:
                self.results.move_to_end(key)
                job.status = "done"
                return job
        self._pool.submit(self._run, job, method_obj)
        return job

    def _target(self, model: int, target: int | str) -> int:
        """A class index of model ``model`` from an index or a class name (case-insensitive)."""
        lm = self.models[model]
        label = f"model {LABELS[model]} ({lm.name})"
        if isinstance(target, bool):
            raise InputError(f"target must be a class index or name, not {target!r}")
        if isinstance(target, int):
            if not 0 <= target < lm.num_classes:
                raise InputError(
                    f"target must be a class index of {label} in [0, {lm.num_classes - 1}], got {target}"
                )
            return target
        lowered = [n.lower() for n in lm.class_names]
        if target.strip().lower() in lowered:
            return lowered.index(target.strip().lower())
        near = closest(target, lm.class_names)
        if near:
            hint = "closest: " + ", ".join(near)
        else:
            hint = "its classes: " + ", ".join(lm.class_names[:10]) + (" ..." if lm.num_classes > 10 else "")
        raise UnknownNameError(f"{label} has no class {target!r}; {hint}")

    def _cost_key(self, spec: dict[str, Any]) -> str:
        return json.dumps(
            [spec["model"], spec["method"], spec.get("layer"), spec.get("params")],
            sort_keys=True,
            default=str,
        )

    def _build(self, spec: dict[str, Any]) -> Any:
        cls = get_method(spec["method"])
        accepted = cls.hyperparameters()
        kwargs: dict[str, Any] = dict(cls.quick_params)
        model = self.models[spec["model"]]
        side = min(model.preprocessing.input_size)
        for key in cls.pixel_params:  # a quick window larger than the input would hide all of it
            if isinstance(kwargs.get(key), int) and kwargs[key] >= side:
                kwargs[key] = max(2, side // 4)
                if "stride" in kwargs:
                    kwargs["stride"] = max(1, side // 8)
        if "backend" in accepted:
            kwargs["backend"] = "eager"  # passes run the model itself: its forward hook counts them
        kwargs |= spec["params"]  # the user's: an unknown one is refused by create
        if spec["layer"]:
            kwargs["layer"] = spec["layer"]
        return create(spec["method"], model, **kwargs)

    def job(self, job_id: str) -> Job:
        with self._state:
            job = self.jobs.get(job_id)
        if job is None:
            raise KeyError(f"no job {job_id!r}")
        return job

    def cancel(self, job_id: str) -> Job:
        job = self.job(job_id)
        job.cancel.set()
        if job.status == "queued":
            job.status = "cancelled"
        return job

    def _run(self, job: Job, method: Any) -> None:
        if job.cancel.is_set():
            job.status = "cancelled"
            return
        spec = job.spec
        stored = self.image(spec["image"])
        model = self.models[spec["model"]]

        def count(module: nn.Module, args: Any) -> None:
            job.passes += 1
            if job.cancel.is_set():
                raise Cancelled(job.id)

        with self._lock:
            job.status, job.started = "running", time.monotonic()
            handle = model.module.register_forward_pre_hook(count)
            try:
                x = model.prepare(stored.image)
                exp = method.explain(x, torch.tensor([spec["target"]]))
            except Cancelled:
                job.status = "cancelled"
                return
            except Exception as err:  # a job's failure is reported on the job; the server goes on
                job.status, job.error = "error", f"{type(err).__name__}: {err}"
                return
            finally:
                handle.remove()
        result = Result(
            job.key,
            exp.method,
            int(exp.targets[0]),
            exp.target_name(),
            float(exp.scores[0]),
            exp.layer,
            exp.seconds,
            exp.numpy(0),
            spec["image"],
            spec["model"],
        )
        with self._state:
            self.pass_counts[self._cost_key(spec)] = job.passes
            self.results[job.key] = result
            while len(self.results) > self.cache_size:
                self.results.popitem(last=False)
        job.status = "done"

    # ------------------------------------------------------------------ results
    def result(self, key: str) -> Result:
        with self._state:
            r = self.results.get(key)
        if r is None:
            raise KeyError(f"no result {key!r}")
        return r

    def scale(self, keys: Sequence[str]) -> ColorScale:
        """One colour scale over the maps of ``keys`` (maps compared side by side: two targets, two
        models, or both)."""
        return choose_scale(*(self.result(k).attribution for k in keys))

    def heat(self, key: str, scale_with: Sequence[str] = ()) -> Image.Image:
        """The map as an RGBA image over the model's view: colour from the scale (shared with
        ``scale_with``), alpha the strength (0 at the scale's neutral end or zero, 255 at its
        extremes), which the page uses for its opacity and threshold controls."""
        r = self.result(key)
        scale = self.scale([key, *scale_with])
        rgb = scale.colorize(r.attribution)
        pos = scale.normalize(r.attribution)
        strength = np.abs(2 * pos - 1) if scale.kind == "diverging" else pos
        alpha = (strength * 255 + 0.5).astype(np.uint8)
        heat = Image.fromarray(np.dstack([rgb, alpha]), "RGBA")
        view = self.view(r.image_id, model=r.model)
        return heat.resize(view.size, Image.Resampling.BILINEAR)

    def close(self) -> None:
        for job in list(self.jobs.values()):
            job.cancel.set()
        self._pool.shutdown(wait=False, cancel_futures=True)
