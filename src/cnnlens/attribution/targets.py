"""Turning what the user says about the target class into class indices."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

from cnnlens.errors import unknown

#: What a caller may pass as ``target``: None (top-1), an index, a class name, or one per image.
Target = None | int | str | Sequence[int | str] | torch.Tensor | np.ndarray


def class_index(value: int | str, class_names: Sequence[str] | None, num_classes: int) -> int:
    """Resolve one class given by index or name (case-insensitive) to an index.

    Raises:
        ValueError: The index is out of range.
        UnknownNameError: The name is not a class of the model (the closest names are listed).
    """
    if isinstance(value, (bool, np.bool_)):
        raise TypeError(f"target must be a class index or name, not a bool ({value!r})")
    if isinstance(value, (int, np.integer)):
        idx = int(value)
    elif isinstance(value, str):
        text = value.strip()
        if text.lstrip("-").isdigit():
            idx = int(text)
        else:
            names = list(class_names or [])
            if not names:
                raise ValueError(
                    f"target {value!r} is a class name, but the model has no class names; "
                    "give a class index instead"
                )
            lowered = [n.lower() for n in names]
            if text.lower() not in lowered:
                raise unknown("class", text, names, "Give an index or one of the model's classes")
            return lowered.index(text.lower())
    else:
        raise TypeError(f"target must be a class index or name, got {type(value).__name__}")
    if not 0 <= idx < num_classes:
        raise ValueError(
            f"target class {idx} is out of range for a model with {num_classes} classes "
            f"(0..{num_classes - 1})"
        )
    return idx


def resolve_targets(
    target: Target, logits: torch.Tensor, class_names: Sequence[str] | None = None
) -> torch.Tensor:
    """Return one class index per input as a ``(N,)`` long tensor.

    Args:
        target: ``None`` for each input's top-1 class; an index or a class name for all inputs;
            or a sequence (or 1-D tensor) with one index or name per input.
        logits: The model output, ``(N, num_classes)``.
        class_names: Names of the classes, needed only when targets are given by name.
    """
    n, num_classes = logits.shape
    if target is None:
        return logits.argmax(dim=1).cpu()
    if isinstance(target, (torch.Tensor, np.ndarray)):
        arr = np.asarray(target.detach().cpu() if isinstance(target, torch.Tensor) else target)
        target = int(arr) if arr.ndim == 0 else [int(v) for v in arr.reshape(-1)]
    if isinstance(target, (int, str, np.integer)):
        idx = class_index(target, class_names, num_classes)
        return torch.full((n,), idx, dtype=torch.long)
    if not isinstance(target, Sequence):
        raise TypeError(
            f"target must be a class index or name, or one per input; got {type(target).__name__}"
        )
    items = list(target)
    if len(items) != n:
        raise ValueError(
            f"got {len(items)} targets for {n} inputs; give one target for all inputs or one per input"
        )
    return torch.tensor([class_index(v, class_names, num_classes) for v in items], dtype=torch.long)
