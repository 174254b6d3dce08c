"""The fused inference network and the padding-free "same" convolutions: same numbers, model untouched."""

from __future__ import annotations

from collections.abc import Callable

import pytest
import torch
from timm.layers.conv2d_same import Conv2dSame
from timm.layers.norm_act import BatchNormAct2d
from torch import nn

from cnnlens.attribution.engine.fused import FusedConv, PostOp, fused_network, inference_pass, post_op
from cnnlens.attribution.engine.layout import to_memory_format
from cnnlens.attribution.engine.padding import padding_free_forward, same_padding_in_conv
from cnnlens.models import LoadedModel
from cnnlens.models.hooks import hook_counts
from tests.conftest import requires


def _randomise_norms(model: nn.Module, seed: int = 0) -> nn.Module:
    """Batch norms with non-trivial running statistics and affine parameters."""
    g = torch.Generator().manual_seed(seed)
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            n = m.num_features
            m.running_mean.copy_(torch.randn(n, generator=g))  # type: ignore[union-attr]
            m.running_var.copy_(torch.rand(n, generator=g) + 0.5)  # type: ignore[union-attr]
            with torch.no_grad():
                m.weight.copy_(torch.randn(n, generator=g))
                m.bias.copy_(torch.randn(n, generator=g))
    return model.eval()


class Block(nn.Module):
    """Conv-BN-act chains of every kind: a plain BN then an activation module, timm's BN+act, a
    depthwise TF-"same" stride-2 conv, a conv straight into an activation, a conv whose output is
    used twice (a residual), and a head."""

    def __init__(self, act: nn.Module | None = None) -> None:
        super().__init__()
        self.stem = Conv2dSame(3, 8, 3, stride=2, bias=False)
        self.bn0 = nn.BatchNorm2d(8)
        self.act0 = act if act is not None else nn.ReLU(inplace=True)
        self.dw = Conv2dSame(8, 8, 3, stride=2, groups=8, bias=False)
        self.bn1 = BatchNormAct2d(8, act_layer=nn.ReLU6)
        self.pw = nn.Conv2d(8, 8, 1, bias=True)
        self.relu = nn.ReLU()
        self.res = nn.Conv2d(8, 8, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(8)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(8, 5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.act0(self.bn0(self.stem(x)))
        x = self.relu(self.pw(self.bn1(self.dw(x))))
        y = self.res(x)
        x = self.bn2(y) + y  # y has two users: bn2 is not folded into res
        return self.fc(self.pool(x).flatten(1))


def _state(model: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.clone() for k, v in model.state_dict().items()}


@requires("fused_conv")
@pytest.mark.parametrize("size", [31, 32])  # odd and even: symmetric and uneven TF padding
def test_fused_network_reproduces_the_model_and_leaves_it_as_found(size: int) -> None:
    torch.manual_seed(0)
    model = _randomise_norms(Block())
    x = torch.randn(3, 3, size, size)
    before = _state(model)
    with torch.inference_mode():
        ref = model(x)
        net = fused_network(model, x, "fp32")
        assert net is not None and net.fused == 4  # stem, dw, pw, res
        got = inference_pass(model, x, "fp32", net)
        cl = inference_pass(model, to_memory_format(x), "fp32", net)
    torch.testing.assert_close(got, ref, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(cl, ref, rtol=1e-5, atol=1e-5)
    assert "forward" not in vars(model) and hook_counts(model) == 0
    for k, v in model.state_dict().items():
        assert torch.equal(v, before[k]), k


@requires("bf16_native", "fused_conv_bf16")
def test_fused_bf16_is_as_close_to_float32_as_autocast() -> None:
    from cnnlens.attribution.engine.precision import precision_context

    torch.manual_seed(1)
    model = _randomise_norms(Block())
    x = torch.randn(8, 3, 32, 32)
    with torch.inference_mode():
        ref = model(x)
        with precision_context("bf16", x.device, model):
            autocast = model(x).float()
        net = fused_network(model, x, "bf16")
        got = inference_pass(model, x, "bf16", net)
    assert got.dtype == torch.float32  # the head ran in float32
    err, base = (got - ref).abs().mean(), (autocast - ref).abs().mean()
    assert err < 1.5 * base + 1e-3, (err, base)
    assert not torch.equal(got, ref)  # it did compute in bf16


ACTIVATIONS: list[Callable[[], nn.Module]] = [
    nn.ReLU,
    nn.ReLU6,
    nn.SiLU,
    nn.Sigmoid,
    nn.Tanh,
    nn.Hardswish,
    nn.Hardsigmoid,
    nn.GELU,
    lambda: nn.GELU(approximate="tanh"),
    lambda: nn.LeakyReLU(0.2),
    lambda: nn.Hardtanh(-1.0, 2.0),
    nn.Identity,
]


@requires("fused_conv")
@pytest.mark.parametrize("make", ACTIVATIONS)
def test_every_known_activation_is_fused_exactly(make: Callable[[], nn.Module]) -> None:
    torch.manual_seed(2)
    model = _randomise_norms(Block(act=make()))
    x = torch.randn(2, 3, 32, 32)
    with torch.inference_mode():
        net = fused_network(model, x, "fp32")
        assert net is not None
        assert model.act0 in net.replaced  # the activation is a post-op, not a separate pass
        torch.testing.assert_close(inference_pass(model, x, "fp32", net), model(x), rtol=1e-5, atol=1e-5)


@requires("fused_conv")
def test_an_unknown_activation_is_left_to_run_as_itself() -> None:
    class Square(nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return x * x

    assert post_op(Square()) is None
    model = _randomise_norms(Block(act=Square()))
    x = torch.randn(2, 3, 32, 32)
    with torch.inference_mode():
        net = fused_network(model, x, "fp32")
        assert net is not None and model.act0 not in net.replaced and model.bn0 in net.replaced
        torch.testing.assert_close(inference_pass(model, x, "fp32", net), model(x), rtol=1e-5, atol=1e-5)


@requires("fused_conv")
def test_hooks_decide_what_may_be_fused() -> None:
    model = _randomise_norms(Block())
    x = torch.randn(2, 3, 32, 32)
    calls: list[int] = []
    top = model.register_forward_pre_hook(lambda _m, a: calls.append(len(a[0])))
    try:
        with torch.inference_mode():
            net = fused_network(model, x, "fp32")
            assert net is not None
            inference_pass(model, x, "fp32", net)
            inference_pass(model, x, "fp32", fused_network(model, x, "fp32"))
        assert calls == [1, 2, 2]  # a hook on the model itself runs: the build's check, then each pass
    finally:
        top.remove()
    inner = model.bn1.register_forward_hook(lambda *_: None)
    try:
        with torch.inference_mode():
            assert fused_network(model, x, "fp32") is None  # a fused-away layer is hooked
    finally:
        inner.remove()
    with torch.inference_mode():
        assert fused_network(model, x, "fp32") is not None


def test_no_fused_network_with_gradients_in_training_mode_or_for_an_untraceable_model() -> None:
    model = _randomise_norms(Block())
    x = torch.randn(2, 3, 32, 32)
    assert fused_network(model, x, "fp32") is None  # gradients on
    model.train()
    with torch.inference_mode():
        assert fused_network(model, x, "fp32") is None
    model.eval()

    class Branchy(Block):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            if x.sum() > 0:  # data-dependent control flow: torch.fx cannot trace it
                return super().forward(x)
            return super().forward(-x)

    branchy = _randomise_norms(Branchy())
    with torch.inference_mode():
        assert fused_network(branchy, x, "fp32") is None


@requires("fused_conv")
def test_changed_weights_rebuild_the_fused_network() -> None:
    model = _randomise_norms(Block())
    x = torch.randn(2, 3, 32, 32)
    with torch.inference_mode():
        first = fused_network(model, x, "fp32")
        assert fused_network(model, x, "fp32") is first  # cached
    with torch.no_grad():
        model.dw.weight.mul_(-2.0)
        model.bn1.running_mean.add_(1.0)  # type: ignore[operator]
    with torch.inference_mode():
        again = fused_network(model, x, "fp32")
        assert again is not None and again is not first
        torch.testing.assert_close(inference_pass(model, x, "fp32", again), model(x), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("groups", [1, 6])
@pytest.mark.parametrize(
    ("kernel", "stride", "size"), [(3, 2, 32), (3, 2, 33), (5, 2, 28), (3, 1, 15), (4, 2, 16)]
)
def test_padding_free_same_convolution_equals_timm(groups: int, kernel: int, stride: int, size: int) -> None:
    torch.manual_seed(3)
    conv = Conv2dSame(6, 6, kernel, stride=stride, groups=groups, bias=True).eval()
    x = torch.randn(2, 6, size, size)
    with torch.no_grad():
        ref = conv(x)
        got = padding_free_forward(conv, x)
        with same_padding_in_conv(conv):
            assert "forward" in vars(conv)
            patched = conv(x)
        fused = FusedConv(conv, None, PostOp("none"), torch.float32, same=True)(x)
    assert "forward" not in vars(conv)
    torch.testing.assert_close(patched, ref, rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(fused, ref, rtol=1e-5, atol=1e-5)
    uneven = (size % stride == 0) and (kernel - stride) % 2 == 1  # one more row after than before
    if got is None:
        assert uneven and groups == 1  # a dense conv with uneven padding keeps timm's own forward
    else:
        torch.testing.assert_close(got, ref, rtol=1e-6, atol=1e-6)


def test_same_padding_is_restored_after_an_error() -> None:
    conv = Conv2dSame(3, 3, 3, stride=2, groups=3)
    with pytest.raises(RuntimeError, match="boom"), same_padding_in_conv(conv):
        raise RuntimeError("boom")
    assert "forward" not in vars(conv)


@pytest.mark.slow
@requires("fused_conv", "bf16_native", "fused_conv_bf16")
def test_lite0_fused_network_reproduces_its_logits(lite0: LoadedModel) -> None:
    from cnnlens.data import load_sample

    module = lite0.module.eval()
    x = to_memory_format(torch.cat([lite0.prepare(load_sample(s)) for s in ("chelsea", "coffee")]))
    with torch.inference_mode():
        ref = module(x)
        net = fused_network(module, x, "fp32")
        assert net is not None and net.fused == 49  # every convolution of the network
        got = inference_pass(module, x, "fp32", net)
        low = inference_pass(module, x, "bf16", fused_network(module, x, "bf16")).float()
    torch.testing.assert_close(got, ref, rtol=1e-4, atol=1e-4)
    assert torch.equal(low.argmax(1), ref.argmax(1))
    p, q = ref.softmax(1), low.softmax(1)
    assert float((p - q).abs().max()) < 0.02


@requires("fused_conv")
def test_a_model_made_under_inference_mode_is_rebuilt_every_call() -> None:
    x = torch.randn(2, 3, 32, 32)
    with torch.inference_mode():  # inference tensors keep no version counter
        model = _randomise_norms(Block())
        first = fused_network(model, x, "fp32")
        model.dw.weight.mul_(-2.0)
        again = fused_network(model, x, "fp32")
        assert first is not None and again is not None and again is not first
        torch.testing.assert_close(inference_pass(model, x, "fp32", again), model(x), rtol=1e-5, atol=1e-5)


@requires("fused_conv", "bf16_native")
def test_one_build_serves_the_bf16_network_and_the_checked_fp32_one(monkeypatch: pytest.MonkeyPatch) -> None:
    import cnnlens.attribution.engine.fused as fused

    model = _randomise_norms(Block())
    x = torch.randn(2, 3, 32, 32)
    builds: list[str] = []
    real = fused.build_fused
    monkeypatch.setattr(fused, "build_fused", lambda m, s, p: (builds.append(p), real(m, s, p))[1])
    with torch.inference_mode():
        low, full = fused_network(model, x, "bf16"), fused_network(model, x, "fp32")
    assert builds == ["bf16"] and low is not None and full is not None and low is not full


@requires("fused_conv")
def test_the_fused_network_is_always_of_the_model_as_it_is_now() -> None:
    """A replaced submodule, a hook added on a container after a first call, and a hook removed
    after the first call: each explanation is of the model as it is at that call."""
    torch.manual_seed(3)
    model = _randomise_norms(Block())
    x = torch.randn(2, 3, 32, 32)

    def fused_or_eager() -> torch.Tensor:
        with torch.inference_mode():
            return inference_pass(model, x, "fp32", fused_network(model, x, "fp32"))

    first = fused_or_eager()
    model.pool = nn.AdaptiveMaxPool2d(1)  # a swap without parameters
    with torch.inference_mode():
        expected = model(x)
    torch.testing.assert_close(fused_or_eager(), expected, rtol=1e-5, atol=1e-5)
    assert not torch.allclose(first, expected)

    outer = nn.Sequential(model)  # a container the trace inlines
    calls: list[int] = []
    with torch.inference_mode():
        fused_network(outer, x, "fp32")  # built once without hooks
    handle = model.register_forward_hook(lambda _m, _i, out: calls.append(1) or out * 2)
    with torch.inference_mode():
        assert fused_network(outer, x, "fp32") is None  # the hooked block is inlined: eager
        doubled = inference_pass(outer, x, "fp32", fused_network(outer, x, "fp32"))
    assert calls and torch.allclose(doubled, 2 * expected, atol=1e-5)
    handle.remove()
    with torch.inference_mode():
        torch.testing.assert_close(
            inference_pass(outer, x, "fp32", fused_network(outer, x, "fp32")), expected
        )
    handle = model.register_forward_hook(lambda _m, _i, out: out * 3)  # present at the first call
    fresh = nn.Sequential(model)
    with torch.inference_mode():
        tripled = inference_pass(fresh, x, "fp32", fused_network(fresh, x, "fp32"))
    handle.remove()
    with torch.inference_mode():
        after = inference_pass(fresh, x, "fp32", fused_network(fresh, x, "fp32"))
    torch.testing.assert_close(tripled, 3 * expected, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(after, expected, rtol=1e-5, atol=1e-5)  # nothing baked in
