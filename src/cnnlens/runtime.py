"""Process-wide settings that make batched CPU passes faster (opt-in for library users).

The command line applies :func:`tune_allocator` at start-up; a Python program calls it once itself.
"""

from __future__ import annotations

import ctypes
import os
import sys

M_TRIM_THRESHOLD = -1  # glibc mallopt parameters (malloc.h)
M_MMAP_MAX = -4


def tune_allocator() -> bool:
    """Keep freed memory in the process instead of handing it back to the kernel (glibc only).

    With glibc's defaults every large tensor is an ``mmap`` that is unmapped when it is freed, so each
    batched forward pass page-faults its activations back in (kernel time, not arithmetic).
    ``mallopt(M_MMAP_MAX, 0)`` serves large blocks from the heap instead, and ``M_TRIM_THRESHOLD``
    = 1 GiB stops the heap being trimmed after each batch, so the next batch reuses the same pages.
    glibc's ``MALLOC_MMAP_THRESHOLD_`` / ``MALLOC_TRIM_THRESHOLD_`` environment variables cannot do
    the same: the mmap threshold they set is capped at 32 MiB. The price is that freed memory stays
    with the process (up to 1 GiB at the top of the heap) for its lifetime.

    The setting is process-wide and stays for the life of the process. The command line applies it
    at start-up; a program that runs many batched passes on the CPU (perturbation and surrogate
    methods, benchmarks) calls it once before them. Set ``CNNLENS_MALLOC_TUNING=0`` to keep glibc's
    defaults. Measurements: ``docs/decisions.md``, "Allocator tuning".

    Returns:
        Whether the allocator was tuned.
    """
    if os.environ.get("CNNLENS_MALLOC_TUNING", "1") == "0" or not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL("libc.so.6")
        return bool(libc.mallopt(M_MMAP_MAX, 0)) and bool(libc.mallopt(M_TRIM_THRESHOLD, 2**30))
    except (OSError, AttributeError):  # not glibc
        return False
