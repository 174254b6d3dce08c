"""DeepLIFT's compiled rescale kernel and the batch-norm folding of its traced copy: the same numbers
as the eager passes, a clean fallback where compiling fails, and the user's model untouched."""

from __future__ import annotations

import logging
import math

import pytest
import torch
from torch import nn

from cnnlens import capabilities
from cnnlens.attribution import create
from cnnlens.attribution.engine import kernels
from cnnlens.attribution.engine.kernels import MIN_ELEMENTS
from cnnlens.attribution.engine.ruled_graph import RuledGraph
from cnnlens.attribution.methods.deeplift import COMPILE_AFTER, DEEPLIFT_RULES, KernelPolicy, Rescale
from cnnlens.errors import InputError
from tests.attribution.test_contract import assert_same, snapshot
from tests.attribution.test_deeplift import Mixed
from tests.conftest import requires


def _operands(shape: tuple[int, ...], shared: bool) -> tuple[torch.Tensor, ...]:
    g = torch.Generator().manual_seed(0)
    x = torch.randn(shape, generator=g)
    x0 = torch.randn((1, *shape[1:]) if shared else shape, generator=g)
    x.view(-1)[::7] = x0.expand_as(x).reshape(-1)[::7]  # ties: the local gradient
    x.view(-1)[::11] = 6.0  # on ReLU6's upper bound
    return torch.randn(shape, generator=g), x, x0


def test_the_rescale_kernel_is_the_rescale_rule() -> None:
    """Closed form of the eager formula: 1 and 0 on one piece, the ratio across pieces, the local
    gradient (PyTorch's own: 1 strictly inside the bounds) where ``x == x0``."""
    x = torch.tensor([2.0, -1.0, 3.0, -2.0, 0.0, 5.0, 7.0])
    x0 = torch.tensor([1.0, -3.0, -1.0, 2.0, 0.0, 5.0, 1.0])
    grad = torch.full_like(x, 2.0)
    got = kernels.clamp_rescale_grad(grad, x, x0, 0.0, 6.0)
    want = 2 * torch.tensor([1.0, 0.0, 3 / 4, 2 / 4, 0.0, 1.0, 5 / 6])
    assert torch.allclose(got, want)
    relu = kernels.clamp_rescale_grad(grad, x, x0, 0.0, math.inf)
    assert relu[-1] == 2.0 and relu[-2] == 2.0  # no upper bound


@requires("compiled_kernels")
@pytest.mark.parametrize("shared", [True, False])
@pytest.mark.parametrize("bounds", [(0.0, math.inf), (0.0, 6.0)])
def test_the_compiled_kernel_equals_the_eager_formula(shared: bool, bounds: tuple[float, float]) -> None:
    for shape in ((3, 4, 5, 6), (1, 4, 5, 6)):
        grad, x, x0 = _operands(shape, shared)
        want = kernels.clamp_rescale_grad(grad, x, x0, *bounds)
        got = kernels.compiled_clamp_rescale_grad(grad, x, x0, *bounds)
        assert got.shape == want.shape and torch.allclose(got, want, rtol=1e-6, atol=0)
        # a layout the flat views do not take (channels last) goes through the 4-d kernel
        last = [t.contiguous(memory_format=torch.channels_last) for t in (grad, x, x0)]
        assert kernels._flat_views(*last) is None
        assert torch.allclose(kernels.compiled_clamp_rescale_grad(*last, *bounds), want, rtol=1e-6, atol=0)


def test_flat_views_only_where_the_operands_line_up() -> None:
    grad, x, x0 = _operands((3, 4, 5, 6), shared=True)
    views = kernels._flat_views(grad, x, x0)
    assert views is not None and [tuple(v.shape) for v in views] == [(3, 120), (3, 120), (1, 120)]
    same = kernels._flat_views(grad, x, x)
    assert same is not None and all(v.ndim == 1 for v in same)
    assert kernels._flat_views(grad, x, x0[:, :2]) is None  # a broadcast other than the batch


def test_a_kernel_that_fails_to_compile_falls_back_to_eager_once(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    calls = []

    def broken(*_args: object) -> torch.Tensor:
        calls.append(1)
        raise RuntimeError("InvalidCxxCompiler: no working C++ compiler found\nmore")

    monkeypatch.setattr(kernels, "_FAILED", [])
    monkeypatch.setitem(kernels._COMPILED, "clamp_rescale_grad(0.0, inf)", broken)
    grad, x, x0 = _operands((2, 3, 4, 4), shared=True)
    want = kernels.clamp_rescale_grad(grad, x, x0, 0.0, math.inf)
    with caplog.at_level(logging.WARNING):
        for _ in range(3):
            got = kernels.compiled_clamp_rescale_grad(grad, x, x0, 0.0, math.inf)
            assert torch.equal(got, want)
    assert len(calls) == 1  # not retried
    warnings = [r.getMessage() for r in caplog.records if "compiled kernels failed" in r.getMessage()]
    assert len(warnings) == 1 and "InvalidCxxCompiler: no working C++ compiler found" in warnings[0]


def test_only_clamps_with_known_bounds_get_a_kernel() -> None:
    rule = Rescale()
    assert rule.kernel(nn.ReLU, nn.ReLU()) is not None
    assert rule.kernel(nn.ReLU6, torch.nn.functional.relu6) is not None
    assert rule.kernel(nn.Hardtanh, nn.Hardtanh(-2.0, 3.0)) is not None
    assert kernels.clamp_bounds(nn.Hardtanh, nn.Hardtanh(-2.0, 3.0)) == (-2.0, 3.0)
    assert rule.kernel(nn.Hardtanh, torch.nn.functional.hardtanh) is None  # bounds in the call
    assert rule.kernel(nn.SiLU, nn.SiLU()) is None and rule.kernel(nn.LeakyReLU, nn.LeakyReLU()) is None


@requires("compiled_kernels")
def test_deeplift_with_compiled_kernels_gives_the_eager_maps(monkeypatch: pytest.MonkeyPatch) -> None:
    model = Mixed()
    before = snapshot(model)
    x = torch.randn(3, 3, 64, 64, generator=torch.Generator().manual_seed(9))
    x[:, :, :, :32] = 0.0  # many ties with the zero baseline
    eager = create("deeplift", model, baseline="zero", compiled="off").explain(x)
    sizes: list[int] = []
    real = kernels.compiled_clamp_rescale_grad

    def counted(grad: torch.Tensor, *args: object, **kwargs: object) -> torch.Tensor:
        sizes.append(grad.numel())
        return real(grad, *args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(kernels, "compiled_clamp_rescale_grad", counted)
    method = create("deeplift", model, baseline="zero", compiled="on")
    compiled = method.explain(x)
    # the two large ReLU sites take the kernel; the small ones after the pool stay eager
    assert sizes and all(n >= MIN_ELEMENTS for n in sizes)
    assert torch.allclose(compiled.attributions, eager.attributions, rtol=1e-5, atol=1e-7)
    assert (compiled.extras["completeness_gap"] <= 1e-4 * compiled.scores.abs().max()).all()
    shap = create("deeplift_shap", model, n_baselines=2, compiled="on").explain(x)
    shap_eager = create("deeplift_shap", model, n_baselines=2, compiled="off").explain(x)
    assert torch.allclose(shap.attributions, shap_eager.attributions, rtol=1e-5, atol=1e-7)
    assert_same(before, snapshot(model))


def test_kernel_policy(monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    with pytest.raises(InputError, match=r"compiled must be one of auto, on, off, got 'yes'"):
        create("deeplift", Mixed(), compiled="yes")
    with pytest.raises(InputError, match=r"compiled must be one of"):
        create("deeplift_shap", Mixed(), compiled=True)
    cpu = torch.device("cpu")
    with capabilities.disabled("compiled_kernels"):
        auto = KernelPolicy("auto")
        assert not auto.wants(COMPILE_AFTER - 1, cpu) and not auto.wants(1, cpu)  # capability missing
        on = KernelPolicy("on")
        with caplog.at_level(logging.WARNING):
            assert not on.wants(1, cpu) and not on.wants(1, cpu)
        assert sum("compiled='on'" in r.getMessage() for r in caplog.records) == 1  # said once
    assert not KernelPolicy("off").wants(10 * COMPILE_AFTER, cpu)
    monkeypatch.setattr(capabilities, "available", lambda *_a: True)
    monkeypatch.setattr(capabilities, "probe", lambda name, *_a: capabilities.Probe(name, True))
    auto = KernelPolicy("auto")
    assert not auto.wants(COMPILE_AFTER - 1, cpu)
    assert auto.wants(1, cpu)  # from the call that reaches COMPILE_AFTER images on


class ConvBN(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.conv = nn.Conv2d(3, 4, 3, padding=1)
        self.bn = nn.BatchNorm2d(4)
        self.shared = nn.Conv2d(4, 4, 1)  # its output feeds a batch norm and the residual
        self.bn2 = nn.BatchNorm2d(4)
        self.fc = nn.Linear(4, 2)
        for bn in (self.bn, self.bn2):
            with torch.no_grad():
                bn.running_mean.uniform_(-0.5, 0.5)
                bn.running_var.uniform_(0.5, 2.0)
                bn.weight.uniform_(0.5, 1.5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.relu(self.bn(self.conv(x)))
        s = self.shared(x)
        return self.fc(torch.relu(self.bn2(s) + s).mean(dim=(2, 3)))


def test_batch_norm_folded_into_a_copy_of_its_convolution() -> None:
    model = ConvBN().eval()
    before = snapshot(model)
    x = torch.randn(2, 3, 8, 8, generator=torch.Generator().manual_seed(1))
    graph = RuledGraph(model, DEEPLIFT_RULES, fold_batch_norm=True)
    assert graph.folded == 1  # bn2's convolution is also used by the residual: not folded
    names = [str(n.target) for n in graph.module.graph.nodes if n.op == "call_module"]
    assert "bn" not in names and "conv" not in names and "bn2" in names and "shared" in names
    graph.reference(torch.zeros(1, 3, 8, 8))
    with torch.no_grad():
        assert torch.allclose(graph(x), model(x), atol=1e-6)
    assert_same(before, snapshot(model))
    assert RuledGraph(model, DEEPLIFT_RULES).folded == 0
    assert RuledGraph(model.train(), DEEPLIFT_RULES, fold_batch_norm=True).folded == 0  # batch statistics


@requires("compiled_kernels")
def test_compiling_first_leaves_autograd_working_in_fork_started_children() -> None:
    """Planted: without a backward pass before the process's first compile, a fork-started child's
    backward fails ("Unable to handle autograd's threading in combination with fork-based ...")."""
    import subprocess
    import sys

    script = """
import multiprocessing as mp, torch
from cnnlens import capabilities
capabilities._CACHE.clear()
assert capabilities.available("compiled_kernels")
def backward(q):
    x = torch.ones(3, requires_grad=True)
    try:
        q.put(float(torch.autograd.grad((2 * x).sum(), x)[0].sum()))
    except RuntimeError as error:
        q.put(str(error)[:60])
backward(mp.Queue())
ctx = mp.get_context("fork")
q = ctx.Queue()
p = ctx.Process(target=backward, args=(q,))
p.start()
print(q.get())
p.join()
"""
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.strip().splitlines()[-1] == "6.0"


@requires("compiled_kernels")
def test_the_kernel_compiles_when_first_called_inside_a_backward_pass(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The first compile of a process may come from a backward pass (grad mode off), and the
    capability probe from a ``no_grad`` block: neither may count as a failed compile."""
    monkeypatch.setattr(kernels, "_FAILED", [])
    monkeypatch.setattr(kernels, "_COMPILED", {})
    monkeypatch.setattr(capabilities, "_CACHE", {})
    with torch.no_grad():
        assert capabilities.available("compiled_kernels")
    model = Mixed()
    x = torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(4))
    compiled = create("deeplift", model, baseline="zero", compiled="on").explain(x)
    assert kernels._FAILED == [] and "clamp_rescale_grad(0.0, inf)" in kernels._COMPILED
    eager = create("deeplift", model, baseline="zero", compiled="off").explain(x)
    assert torch.allclose(compiled.attributions, eager.attributions, rtol=1e-5, atol=1e-7)
