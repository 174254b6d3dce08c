"""What this machine's PyTorch can run, found by running each fast path's real op once.

A fast path (bfloat16 kernels, oneDNN's fused convolution) is used only where its op has run here on a
tiny input and given the right numbers. The answer is cached per device for the process. CPU flag lists
go stale (a new instruction set, a PyTorch release that drops or adds a kernel); the op itself cannot.

Capabilities (see :data:`CAPABILITIES`):

* ``bf16_autocast``: bfloat16 autocast of a convolution and a linear layer, forward and backward, at
  any speed. Where even this fails, ``precision="bf16"`` stops with one clear line.
* ``bf16_native``: the device computes bfloat16 convolutions in its own kernels (on the CPU oneDNN's
  bf16 convolution, which needs AVX512-BW/VL/DQ, AVX-NE-CONVERT or AMX; on CUDA a bf16-capable GPU).
  Without it autocast still runs, emulated and slower than float32, so ``precision="auto"`` picks fp32.
* ``fused_conv``: oneDNN's convolution with a fused pointwise activation
  (``torch.ops.mkldnn._convolution_pointwise``, the op PyTorch's inductor emits when it freezes a
  network), in float32: the fused inference network's kernel.
* ``fused_conv_bf16``: the same op on bfloat16 inputs and weights (float32 bias).
* ``compiled_kernels``: ``torch.compile`` (inductor) of an elementwise function with dynamic shapes,
  which on the CPU needs a working C++ compiler: DeepLIFT's one-pass rescale kernel
  (:mod:`cnnlens.attribution.engine.kernels`). Its probe compiles, which takes seconds, so it runs
  only when asked: by a method that wants the kernels, or by :func:`report`.

Any capability can be switched off by name, for a test of the fallback or to work around a broken
kernel: ``CNNLENS_DISABLE=bf16_native,fused_conv`` (``all`` for every one) in the environment, or
:func:`disabled` as a context manager.
"""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import torch
from torch.nn import functional as F

from cnnlens.errors import InputError

logger = logging.getLogger(__name__)

#: The environment variable naming capabilities to treat as missing (comma-separated, or ``all``).
ENV_DISABLE = "CNNLENS_DISABLE"

CAPABILITIES: dict[str, str] = {
    "bf16_autocast": "bfloat16 autocast of convolution and linear layers, forward and backward",
    "bf16_native": "bfloat16 convolution kernels of the device (CPU: oneDNN with AVX512-BW/VL/DQ, "
    "AVX-NE-CONVERT or AMX; CUDA: a bf16-capable GPU)",
    "fused_conv": "oneDNN convolution with a fused activation (mkldnn._convolution_pointwise), float32",
    "fused_conv_bf16": "oneDNN convolution with a fused activation on bfloat16 inputs",
    "compiled_kernels": "torch.compile (inductor) of elementwise kernels (on the CPU: a C++ compiler)",
}


@dataclass(frozen=True)
class Probe:
    """The outcome of one probe: whether the capability is there, and if not, why."""

    name: str
    available: bool
    reason: str = ""


_CACHE: dict[tuple[str, str], Probe] = {}
_FORCED_OFF: list[frozenset[str]] = []


def _check_name(name: str) -> None:
    if name not in CAPABILITIES:
        raise InputError(f"unknown capability {name!r}; expected one of {', '.join(CAPABILITIES)}")


def _switched_off(name: str) -> bool:
    words = {w.strip() for w in os.environ.get(ENV_DISABLE, "").split(",") if w.strip()}
    for group in _FORCED_OFF:
        words |= group
    return name in words or "all" in words


def _first_line(error: BaseException) -> str:
    text = str(error).strip().splitlines()
    return f"{type(error).__name__}: {text[0] if text else ''}".strip()


def _tiny(device: torch.device) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    x = torch.randn(2, 8, 6, 6, generator=g).to(device)
    w = torch.randn(4, 8, 3, 3, generator=g).to(device)
    b = torch.randn(4, generator=g).to(device)
    return x, w, b


def _close(got: torch.Tensor, ref: torch.Tensor, tol: float) -> None:
    err = float((got.detach().float() - ref.detach().float()).abs().max())
    scale = 1.0 + float(ref.abs().max())
    if not err <= tol * scale:  # also catches NaN
        raise RuntimeError(f"wrong result: max error {err:.3g} against {tol * scale:.3g} allowed")


def _bf16_autocast(device: torch.device) -> None:
    x, w, b = _tiny(device)
    x.requires_grad_(True)
    lin = torch.randn(3, 4 * 6 * 6).to(device)
    with torch.autocast(device_type=device.type, dtype=torch.bfloat16):
        y = F.conv2d(x, w, b, padding=1)
        out = F.linear(y.flatten(1), lin)
    if y.dtype != torch.bfloat16:
        raise RuntimeError(f"autocast left the convolution in {y.dtype}")
    out.float().sum().backward()
    with torch.no_grad():
        ref = F.linear(F.conv2d(x, w, b, padding=1).flatten(1), lin)
    _close(out, ref, 0.05)
    if x.grad is None or not bool(torch.isfinite(x.grad).all()):
        raise RuntimeError("no finite gradient through the bf16 convolution")


def _bf16_native(device: torch.device) -> None:
    x, w, b = _tiny(device)
    if device.type == "cuda":
        if not torch.cuda.is_bf16_supported():
            raise RuntimeError("torch.cuda.is_bf16_supported() is False")
        got = F.conv2d(x.bfloat16(), w.bfloat16(), b.bfloat16(), padding=1)
    elif device.type == "cpu":
        if not torch.backends.mkldnn.is_available():
            raise RuntimeError("PyTorch is built without oneDNN (mkldnn)")
        got = torch.ops.aten.mkldnn_convolution(
            x.bfloat16(), w.bfloat16(), b.bfloat16(), [1, 1], [1, 1], [1, 1], 1
        )
    else:
        raise RuntimeError(f"no bf16 probe for device type {device.type!r}")
    _close(got, F.conv2d(x.float(), w.float(), b.float(), padding=1), 0.05)


def _pointwise(device: torch.device, dtype: torch.dtype) -> None:
    if device.type != "cpu":
        raise RuntimeError("oneDNN's fused convolution is a CPU op")
    if not torch.backends.mkldnn.is_available():
        raise RuntimeError("PyTorch is built without oneDNN (mkldnn)")
    op = getattr(getattr(torch.ops, "mkldnn", None), "_convolution_pointwise", None)
    if op is None:
        raise RuntimeError("this PyTorch has no torch.ops.mkldnn._convolution_pointwise")
    x, w, b = _tiny(device)
    with torch.inference_mode():
        got = op(x.to(dtype), w.to(dtype), b, [1, 1], [1, 1], [1, 1], 1, "relu", [], "")
        ref = F.relu(F.conv2d(x, w, b, padding=1))
    _close(got, ref, 1e-5 if dtype == torch.float32 else 0.05)


def start_autograd_before_compiling() -> None:
    """Run one tiny backward pass before the first ``torch.compile`` of the process.

    Measured with torch 2.14 on the CPU: when inductor compiles before the process's first backward
    pass, that backward starts autograd's per-device threads and registers a fork handler, after which
    every backward pass in a fork-started child fails ("Unable to handle autograd's threading in
    combination with fork-based multiprocessing"); a backward pass first keeps the engine as it is
    in a process that never compiles. Cheap, and harmless where it does not matter.
    """
    with torch.enable_grad():  # also from inside a backward pass or a no_grad block
        point = torch.zeros(1, requires_grad=True)
        torch.autograd.grad(point.sum(), point)


def _compiled(device: torch.device) -> None:
    def kernel(x: torch.Tensor, x0: torch.Tensor) -> torch.Tensor:
        dx = x - x0
        return torch.where(dx == 0, (x > 0).to(x.dtype), (torch.relu(x) - torch.relu(x0)) / dx)

    x, w, _ = _tiny(device)
    x0 = w[:1, :, :1, :1]
    start_autograd_before_compiling()
    with torch.no_grad():
        got = torch.compile(kernel, dynamic=True, fullgraph=True)(x, x0)
        _close(got, kernel(x, x0), 1e-6)


_PROBES: dict[str, Callable[[torch.device], None]] = {
    "bf16_autocast": _bf16_autocast,
    "bf16_native": _bf16_native,
    "fused_conv": lambda d: _pointwise(d, torch.float32),
    "fused_conv_bf16": lambda d: _pointwise(d, torch.bfloat16),
    "compiled_kernels": _compiled,
}


def probe(name: str, device: torch.device | str = "cpu") -> Probe:
    """Run (once per process and device) the probe of capability ``name`` on ``device``.

    Raises:
        ValueError: Unknown capability name.
    """
    _check_name(name)
    device = torch.device(device)
    if _switched_off(name):
        return Probe(name, False, f"switched off ({ENV_DISABLE} or capabilities.disabled)")
    key = (name, str(device))
    if key not in _CACHE:
        try:
            _PROBES[name](device)
            _CACHE[key] = Probe(name, True)
        except Exception as error:  # any failure of the real op means: not here
            _CACHE[key] = Probe(name, False, _first_line(error))
            logger.info("capability %s missing on %s: %s", name, device, _CACHE[key].reason)
    return _CACHE[key]


def available(name: str, device: torch.device | str = "cpu") -> bool:
    """Whether capability ``name`` runs on ``device`` (see :func:`probe`)."""
    return probe(name, device).available


def cpu_name() -> str:
    """The CPU's model name (from ``/proc/cpuinfo`` on Linux), for benchmark headers and reports."""
    import platform

    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                if line.lower().startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "unknown CPU"


def summary(device: torch.device | str = "cpu") -> str:
    """One line: the capabilities present on ``device`` and those missing."""
    found = report(device)
    have = [n for n, p in found.items() if p.available]
    lack = [n for n, p in found.items() if not p.available]
    return f"capabilities: {', '.join(have) or 'none'}" + (f"; missing: {', '.join(lack)}" if lack else "")


def report(device: torch.device | str = "cpu") -> dict[str, Probe]:
    """Every capability's probe on ``device``."""
    return {name: probe(name, device) for name in CAPABILITIES}


@contextlib.contextmanager
def disabled(*names: str) -> Iterator[None]:
    """Treat the named capabilities (or ``"all"``) as missing inside the block."""
    for name in names:
        if name != "all":
            _check_name(name)
    _FORCED_OFF.append(frozenset(names))
    try:
        yield
    finally:
        _FORCED_OFF.pop()
