"""The result of every attribution method."""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from PIL import Image

from cnnlens.data.transforms import Preprocessing
from cnnlens.errors import InputError
from cnnlens.outputs import write_with

if TYPE_CHECKING:
    from cnnlens.viz.overlay import ColorScale

#: Prefix of the ``.npz`` keys that hold :attr:`Explanation.extras`.
EXTRA_PREFIX = "extra_"
#: Extras with at most this many numbers per input also go into ``summary.json``.
SMALL_EXTRA = 16


@dataclass
class Explanation:
    """Attribution maps for a batch of inputs, with what produced them.

    Attributes:
        attributions: ``(N, H, W)`` float32 maps at the model's input resolution.
        targets: ``(N,)`` class explained for each input.
        scores: ``(N,)`` probability the model gives each target.
        method: Registry name of the method.
        layer: Dotted name of the layer used, if any.
        seconds: Wall time of the whole ``explain`` call.
        params: The method's hyper-parameters; for methods that take ``precision``, also
            ``computed_in``: ``"fp32"`` or ``"bf16"``, what the passes ran at (``"auto"`` resolved);
            with bf16, ``bf16_kernels``: ``"native"`` or ``"emulated"`` (no bf16 kernels on the device).
        class_names: The model's class names, if known.
        signed: Whether the method's values can be negative (its colour scale is chosen by the
            values themselves: see :meth:`color_scale`).
        extras: Method-specific results (per-input lists or tensors).
        preprocessing: The model's preprocessing (set by ``explain`` for a
            :class:`~cnnlens.models.LoadedModel`, ``None`` for a bare ``nn.Module``): :meth:`render`
            uses it to place the map on the original photo without being told.
    """

    attributions: torch.Tensor
    targets: torch.Tensor
    scores: torch.Tensor
    method: str
    layer: str | None = None
    seconds: float = 0.0
    params: dict[str, Any] = field(default_factory=dict)
    class_names: list[str] | None = None
    signed: bool = False
    extras: dict[str, Any] = field(default_factory=dict)
    preprocessing: Preprocessing | None = None

    def __len__(self) -> int:
        return int(self.attributions.shape[0])

    def __getitem__(self, index: int) -> Explanation:
        """The explanation of one input (a batch of one)."""
        if not -len(self) <= index < len(self):
            raise IndexError(f"index {index} out of range for {len(self)} explanations")
        sl = slice(index, index + 1) if index >= 0 else slice(len(self) + index, len(self) + index + 1)
        extras = {k: (v[sl] if self.per_input(v) else v) for k, v in self.extras.items()}
        return replace(
            self,
            attributions=self.attributions[sl],
            targets=self.targets[sl],
            scores=self.scores[sl],
            extras=extras,
        )

    def target_name(self, index: int = 0) -> str:
        t = int(self.targets[index])
        return self.class_names[t] if self.class_names else str(t)

    def numpy(self, index: int = 0) -> np.ndarray:
        """The ``(H, W)`` float32 map of one input."""
        return self.attributions[index].detach().cpu().numpy().astype(np.float32)

    def save(self, path: str | os.PathLike[str]) -> Path:
        """Write a compressed ``.npz`` that :meth:`load` reads back.

        Keys: ``attribution`` (H x W, or N x H x W for a batch), ``target``, ``score``, ``method``,
        ``layer``, ``class_name`` (of each target), ``class_names`` (the model's, when known),
        ``signed``, ``params`` (JSON), ``preprocessing`` (JSON, when known), and one
        ``extra_<name>`` array per entry of :attr:`extras` (for a single input without the batch
        axis, like ``attribution``; per-input arrays of different shapes in a batch are written as
        ``extra_<name>_<i>``). ``extras`` (JSON) records how each extra was stored; extras that are
        not arrays or numbers are kept there as JSON.
        """
        p = Path(path)
        single = len(self) == 1
        att = self.attributions.detach().cpu().numpy().astype(np.float32)
        names = [self.target_name(i) for i in range(len(self))]
        arrays, layout = self._encode_extras()
        content: dict[str, Any] = {
            "attribution": att[0] if single else att,
            "target": np.asarray(self.targets.numpy()[0] if single else self.targets.numpy()),
            "score": np.asarray(self.scores.numpy()[0] if single else self.scores.numpy(), np.float32),
            "method": np.asarray(self.method),
            "layer": np.asarray(self.layer or ""),
            "class_name": np.asarray(names[0] if single else names),
            "signed": np.asarray(self.signed),
            "params": np.asarray(json.dumps(self.params, default=str)),
            "extras": np.asarray(json.dumps(layout, default=str)),
            **arrays,
        }
        if self.class_names is not None:
            content["class_names"] = np.asarray(list(self.class_names), dtype=str)
        if self.preprocessing is not None:
            content["preprocessing"] = np.asarray(json.dumps(self.preprocessing.to_dict()))
        return write_with(p, lambda f: np.savez_compressed(f, **content))

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> Explanation:
        """Read an explanation written by :meth:`save` (files without the newer keys load too)."""
        with np.load(path, allow_pickle=False) as f:
            att = torch.from_numpy(f["attribution"])
            single = att.ndim == 2
            layout = json.loads(str(f["extras"])) if "extras" in f else {}
            return cls(
                attributions=att[None] if single else att,
                targets=torch.as_tensor(f["target"]).reshape(-1).long(),
                scores=torch.as_tensor(f["score"]).reshape(-1).float(),
                method=str(f["method"]),
                layer=str(f["layer"]) or None,
                params=json.loads(str(f["params"])),
                class_names=[str(n) for n in f["class_names"]] if "class_names" in f else None,
                signed=bool(f["signed"]) if "signed" in f else False,
                extras={name: _decode_extra(f, name, how) for name, how in layout.items()},
                preprocessing=(
                    Preprocessing.from_dict(json.loads(str(f["preprocessing"])))
                    if "preprocessing" in f
                    else None
                ),
            )

    def per_input(self, value: Any) -> bool:
        """Whether an extra holds one entry per input (a list or tensor of length ``len(self)``)."""
        if isinstance(value, torch.Tensor):
            return value.ndim > 0 and value.shape[0] == len(self)
        return isinstance(value, (list, tuple)) and len(value) == len(self)

    def extra(self, name: str, index: int = 0) -> Any:
        """The value of extra ``name`` for input ``index`` (per-input extras), or its one value."""
        if name not in self.extras:
            known = ", ".join(sorted(self.extras)) or "none"
            raise KeyError(f"{self.method} has no extra {name!r}; it has: {known}")
        value = self.extras[name]
        return value[index] if self.per_input(value) else value

    def small_extras(self, index: int = 0, max_values: int = SMALL_EXTRA) -> dict[str, Any]:
        """JSON-ready extras of input ``index`` with at most ``max_values`` numbers each.

        Scalars become Python numbers (non-finite ones ``None``), small arrays nested lists; larger
        arrays (segments, masks, maps) are left to the ``.npz`` written by :meth:`save`.
        """
        out: dict[str, Any] = {}
        for name in self.extras:
            value = _as_array(self.extra(name, index))
            if value is None:
                continue
            if value.size <= max_values and value.dtype.kind in "biufU":
                out[name] = _json_ready(value)
        return out

    def _encode_extras(self) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
        """The ``extra_*`` arrays of :meth:`save`, and per extra how :meth:`load` rebuilds it."""
        arrays: dict[str, np.ndarray] = {}
        layout: dict[str, Any] = {}
        for name, value in self.extras.items():
            stored, layout[name] = self._encode_extra(f"{EXTRA_PREFIX}{name}", value)
            arrays.update(stored)
        return arrays, layout

    def _encode_extra(self, key: str, value: Any) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
        kind = "tensor" if isinstance(value, torch.Tensor) else "list"
        as_json = {"store": "json", "value": _json_ready_any(value)}
        if not self.per_input(value):
            array = _as_array(value)
            return ({}, as_json) if array is None else ({key: array}, {"store": "whole", "kind": kind})
        items = [_as_array(v) for v in value]
        arrays = [a for a in items if a is not None]
        if len(arrays) < len(items):
            return {}, as_json
        if len(arrays) == 1:
            return {key: arrays[0]}, {"store": "single", "kind": kind}
        if len({(a.shape, a.dtype.str) for a in arrays}) == 1:
            return {key: np.stack(arrays)}, {"store": "stacked", "kind": kind}
        ragged = {f"{key}_{i}": a for i, a in enumerate(arrays)}
        return ragged, {"store": "ragged", "kind": kind, "count": len(arrays)}

    def _preprocessing(self, given: Preprocessing | None) -> Preprocessing | None:
        """The preprocessing to draw with: ``given``, else the one the explanation carries."""
        return given if given is not None else self.preprocessing

    def render(
        self,
        image: Image.Image,
        index: int = 0,
        *,
        preprocessing: Preprocessing | None = None,
        alpha: float = 0.5,
        scale: ColorScale | None = None,
        max_side: int = 512,
    ) -> Image.Image:
        """Overlay one map on its image.

        The map is drawn on the part of the original photo the model saw, at up to ``max_side``
        pixels, using ``preprocessing`` or else the explanation's own :attr:`preprocessing`. Without
        either (an explanation of a bare ``nn.Module``) ``image`` is taken as the model-input view.

        Args:
            image: The original photo, or the model-input view when no preprocessing is known.
            index: Which input of the batch.
            preprocessing: Overrides :attr:`preprocessing` (the model's, set by ``explain``).
            alpha: Opacity of the heat map.
            scale: The colour scale (default :meth:`color_scale`: chosen by this map's values,
                sequential when they are all of one sign, diverging around zero otherwise); pass
                one scale to draw maps that are compared side by side alike.
            max_side: Longest side of the returned image, in pixels.
        """
        from cnnlens.viz.overlay import overlay

        view = _view(image, self._preprocessing(preprocessing), max_side)
        return overlay(view, self.numpy(index), alpha=alpha, scale=scale or self.color_scale(index))

    def color_scale(self, index: int | None = None) -> ColorScale:
        """The colour scale chosen by the values (:func:`~cnnlens.viz.choose_scale`) of map ``index``,
        or of all maps of the batch when ``index`` is ``None`` (one scale to compare them by)."""
        from cnnlens.viz.overlay import choose_scale

        indices = range(len(self)) if index is None else [index]
        return choose_scale(*(self.numpy(i) for i in indices))

    def render_mask(
        self,
        image: Image.Image,
        name: str = "top_mask",
        index: int = 0,
        *,
        preprocessing: Preprocessing | None = None,
        dim: float = 0.3,
        max_side: int = 512,
    ) -> Image.Image:
        """Show the image where a boolean ``(H, W)`` extra is true and darken it elsewhere, as in the
        LIME figure of the top superpixels (LIME's ``top_mask``).

        Args:
            image: As for :meth:`render`.
            name: The extra holding the mask.
            index: Which input of the batch.
            preprocessing: As for :meth:`render`.
            dim: Brightness kept outside the mask (0 black, 1 unchanged).
            max_side: As for :meth:`render`.

        Raises:
            KeyError: The method returned no extra ``name``.
            ValueError: The extra is not an ``(H, W)`` mask.
        """
        mask = _as_array(self.extra(name, index))
        if mask is None or mask.ndim != 2:
            shape = "not an array" if mask is None else f"shape {mask.shape}"
            raise InputError(f"extra {name!r} of {self.method} is {shape}, expected an (H, W) mask")
        view = _view(image, self._preprocessing(preprocessing), max_side).convert("RGB")
        keep = Image.fromarray(mask.astype(bool).astype(np.uint8) * 255)
        keep = keep.resize(view.size, Image.Resampling.NEAREST)
        dark = Image.eval(view, lambda v: round(v * dim))
        return Image.composite(view, dark, keep)


def _view(image: Image.Image, preprocessing: Preprocessing | None, max_side: int) -> Image.Image:
    """The part of ``image`` the model saw (with ``preprocessing``), at most ``max_side`` pixels.

    A large photo is cropped and scaled in one ``resize(box=...)``: no full-resolution copy of the
    crop is made (Pillow's ``crop`` would also apply its decompression-bomb check again, failing on
    photos that :func:`~cnnlens.data.load_image` was allowed to read with a higher ``max_pixels``).
    """
    left, top, right, bottom = (
        preprocessing.crop_box(image.size) if preprocessing is not None else (0, 0, *image.size)
    )
    width, height = right - left, bottom - top
    inside = left >= 0 and top >= 0 and right <= image.width and bottom <= image.height
    if max(width, height) <= max_side or not inside:  # small, or padded beyond the photo's edges
        image = image.crop((left, top, right, bottom))
        left, top, right, bottom = 0, 0, width, height
    if max(width, height) <= max_side:
        return image
    scale = max_side / max(width, height)
    size = (round(width * scale), round(height * scale))
    return image.resize(size, box=(left, top, right, bottom))


def _as_array(value: Any) -> np.ndarray | None:
    """A tensor, number, bool or string as a NumPy array; ``None`` for anything else."""
    if isinstance(value, torch.Tensor):
        return value.detach().cpu().numpy()
    if isinstance(value, (bool, int, float, str, np.generic, np.ndarray)):
        array = np.asarray(value)
        return None if array.dtype.kind == "O" else array
    return None


def _json_ready(array: np.ndarray) -> Any:
    """An array as a Python scalar or nested list, with non-finite floats as ``None``."""
    return _finite_or_none(array.tolist())


def _finite_or_none(value: Any) -> Any:
    if isinstance(value, list):
        return [_finite_or_none(v) for v in value]
    return None if isinstance(value, float) and not np.isfinite(value) else value


def _json_ready_any(value: Any) -> Any:
    """Any extra as something :func:`json.dumps` accepts (arrays as lists, the rest as given)."""
    array = _as_array(value)
    if array is not None:
        return array.tolist()
    if isinstance(value, (list, tuple)):
        return [_json_ready_any(v) for v in value]
    if isinstance(value, dict):
        return {str(k): _json_ready_any(v) for k, v in value.items()}
    return value if value is None or isinstance(value, (bool, int, float, str)) else str(value)


def _from_array(array: np.ndarray) -> Any:
    """One stored item back as a Python scalar (0-d) or a tensor."""
    return array.item() if array.ndim == 0 else torch.from_numpy(np.array(array))


def _decode_extra(f: Any, name: str, how: dict[str, Any]) -> Any:
    """Rebuild extra ``name`` from an open ``.npz`` as :meth:`Explanation._encode_extras` stored it."""
    store, key = how["store"], f"{EXTRA_PREFIX}{name}"
    if store == "json":
        return how["value"]
    if store == "whole":
        array = f[key]
        return torch.from_numpy(np.array(array)) if how["kind"] == "tensor" else _from_array(array)
    if store == "ragged":
        return [_from_array(f[f"{key}_{i}"]) for i in range(how["count"])]
    stacked = f[key][None] if store == "single" else f[key]
    if how["kind"] == "tensor":
        return torch.from_numpy(np.array(stacked))
    return [_from_array(a) for a in stacked]
