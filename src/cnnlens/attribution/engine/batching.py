"""A batch size chosen from free memory."""

from __future__ import annotations

import logging
import os
from typing import Any

import torch
from torch import nn

from cnnlens.models.hooks import Handles

logger = logging.getLogger(__name__)

AUTO_MEMORY_FRACTION = 0.25
AUTO_MAX_BATCH = {"cpu": 64, "cuda": 512}


def free_memory(device: torch.device) -> int:
    """Free bytes on ``device``: CUDA's free memory, or ``MemAvailable`` from ``/proc/meminfo``."""
    if device.type == "cuda":
        return int(torch.cuda.mem_get_info(device)[0])
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return int(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_AVPHYS_PAGES"))


def activation_bytes(module: nn.Module, sample: torch.Tensor) -> int:
    """Bytes of every leaf module's output for one input (an upper bound of a forward's working set)."""
    total = 0
    handles = Handles()

    def hook(_m: nn.Module, _i: Any, out: Any) -> None:
        nonlocal total
        if isinstance(out, torch.Tensor):
            total += out.numel() * out.element_size()

    try:
        for m in module.modules():
            if not list(m.children()):
                handles.add(m.register_forward_hook(hook))
        with torch.inference_mode():
            module(sample[:1])
    finally:
        handles.remove()
    return max(total, sample[:1].numel() * sample.element_size())


def auto_batch_size(module: nn.Module, sample: torch.Tensor) -> int:
    """A batch size chosen from free memory.

    The rule: a quarter of the free memory (:func:`free_memory`) divided by the bytes that every
    layer's output for one input adds up to (:func:`activation_bytes`, an upper bound because
    inference frees activations as it goes), clipped to ``[1, 64]`` on CPU (larger CPU batches do not
    run faster per image) and ``[1, 512]`` on CUDA. Costs one forward pass of one input.
    """
    per_item = activation_bytes(module, sample)
    budget = int(free_memory(sample.device) * AUTO_MEMORY_FRACTION)
    cap = AUTO_MAX_BATCH.get(sample.device.type, 64)
    size = max(1, min(cap, budget // per_item))
    logger.debug(
        "auto batch size %d (%.1f MB per input, %.0f MB budget)", size, per_item / 2**20, budget / 2**20
    )
    return size
