"""The memory format of a pass's input (``channels_last`` or contiguous); the model is never converted."""

from __future__ import annotations

import torch

from cnnlens.errors import InputError

MEMORY_FORMATS = ("auto", "channels_last", "contiguous")


def check_memory_format(memory_format: str) -> str:
    """Validate a ``memory_format=`` argument."""
    if memory_format not in MEMORY_FORMATS:
        raise InputError(f"memory_format must be one of {', '.join(MEMORY_FORMATS)}, got {memory_format!r}")
    return memory_format


def to_memory_format(batch: torch.Tensor, memory_format: str = "auto") -> torch.Tensor:
    """A 4-d batch in the memory format of the pass: ``channels_last`` unless ``"contiguous"``.

    ``"auto"`` is ``channels_last`` in both precisions: oneDNN's CPU convolutions are fastest on it
    (measurements in ``docs/decisions.md``, "Memory format"). The model's weights are never converted
    (the model is left as found); convolutions take the input's layout.
    """
    if batch.ndim == 4 and memory_format != "contiguous":
        return batch.contiguous(memory_format=torch.channels_last)
    return batch
