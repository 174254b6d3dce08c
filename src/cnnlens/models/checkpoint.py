"""cnnlens checkpoints: weights plus everything needed to rebuild and explain the model.

A checkpoint is a ``dict`` of tensors and plain values, so it loads with ``torch.load(...,
weights_only=True)``; it is written atomically (a temporary file renamed into place), so an
interrupted write never leaves a broken checkpoint behind.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch

from cnnlens.models.loaded import LoadedModel
from cnnlens.outputs import write_with

FORMAT = "cnnlens.checkpoint"
VERSION = 1


def checkpoint_dict(model: LoadedModel, extra: dict[str, Any] | None = None) -> dict[str, Any]:
    """The checkpoint contents for ``model`` (``extra`` is stored under ``"extra"``)."""
    return {
        "format": FORMAT,
        "version": VERSION,
        "arch": model.arch,
        "arch_source": model.arch_source,
        "head": model.head,
        "num_classes": model.num_classes,
        "class_names": list(model.class_names),
        "preprocessing": model.preprocessing.to_dict(),
        "default_layer": model.default_layer,
        "state_dict": {k: v.detach().cpu() for k, v in model.module.state_dict().items()},
        "extra": extra or {},
    }


def atomic_save(obj: Any, path: str | os.PathLike[str]) -> Path:
    """``torch.save`` to a temporary file in the same folder, then rename it over ``path`` (see
    :func:`cnnlens.outputs.atomic_writer`)."""
    return write_with(path, lambda f: torch.save(obj, f))


def save_checkpoint(
    model: LoadedModel, path: str | os.PathLike[str], extra: dict[str, Any] | None = None
) -> Path:
    """Write ``model`` as a cnnlens checkpoint that :func:`cnnlens.models.load_model` reads back."""
    return atomic_save(checkpoint_dict(model, extra), path)


def is_cnnlens_checkpoint(obj: object) -> bool:
    return isinstance(obj, dict) and obj.get("format") == FORMAT
