"""The result of every attribution method."""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from cnnlens.data.transforms import Preprocessing


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
        params: The method's hyper-parameters.
        class_names: The model's class names, if known.
        signed: Whether negative values are meaningful (rendered with a diverging colour map).
        extras: Method-specific results (per-input lists or tensors).
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

    def __len__(self) -> int:
        return int(self.attributions.shape[0])

    def __getitem__(self, index: int) -> Explanation:
        """The explanation of one input (a batch of one)."""
        if not -len(self) <= index < len(self):
            raise IndexError(f"index {index} out of range for {len(self)} explanations")
        sl = slice(index, index + 1) if index >= 0 else slice(len(self) + index, len(self) + index + 1)
        extras = {
            k: (v[sl] if isinstance(v, (list, torch.Tensor)) and len(v) == len(self) else v)
            for k, v in self.extras.items()
        }
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
        """Write ``.npz``: ``attribution`` (H x W, or N x H x W for a batch), ``target``, ``score``,
        plus ``method``, ``layer``, ``class_name`` and ``params`` (JSON)."""
        p = Path(path)
        p.parent.mkdir(parents=True, exist_ok=True)
        single = len(self) == 1
        att = self.attributions.detach().cpu().numpy().astype(np.float32)
        names = [self.target_name(i) for i in range(len(self))]
        np.savez_compressed(
            p,
            attribution=att[0] if single else att,
            target=np.asarray(self.targets.numpy()[0] if single else self.targets.numpy()),
            score=np.asarray(self.scores.numpy()[0] if single else self.scores.numpy(), np.float32),
            method=np.asarray(self.method),
            layer=np.asarray(self.layer or ""),
            class_name=np.asarray(names[0] if single else names),
            params=np.asarray(json.dumps(self.params, default=str)),
        )
        return p

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> Explanation:
        """Read an explanation written by :meth:`save`."""
        with np.load(path, allow_pickle=False) as f:
            att = torch.from_numpy(f["attribution"])
            single = att.ndim == 2
            return cls(
                attributions=att[None] if single else att,
                targets=torch.as_tensor(f["target"]).reshape(-1).long(),
                scores=torch.as_tensor(f["score"]).reshape(-1).float(),
                method=str(f["method"]),
                layer=str(f["layer"]) or None,
                params=json.loads(str(f["params"])),
            )

    def render(
        self,
        image: Image.Image,
        index: int = 0,
        *,
        preprocessing: Preprocessing | None = None,
        alpha: float = 0.5,
        cmap: str | None = None,
        max_side: int = 512,
    ) -> Image.Image:
        """Overlay one map on its image.

        Args:
            image: The original photo (with ``preprocessing``) or the model-input view (without).
            index: Which input of the batch.
            preprocessing: When given, the map is drawn on the part of the original photo the model
                saw, at up to ``max_side`` pixels, instead of on the low-resolution input view.
            alpha: Opacity of the heat map.
            cmap: A matplotlib colour map (default ``jet``, or ``bwr`` for signed maps).
        """
        from cnnlens.viz.overlay import overlay

        if preprocessing is not None:
            image = image.crop(preprocessing.crop_box(image.size))
        if max(image.size) > max_side:
            scale = max_side / max(image.size)
            image = image.resize((round(image.width * scale), round(image.height * scale)))
        return overlay(image, self.numpy(index), signed=self.signed, alpha=alpha, cmap=cmap)
