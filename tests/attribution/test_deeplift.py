"""DeepLIFT, DeepLIFT-SHAP and LRP against closed forms and planted truths.

DeepLIFT's rescale rule on ``v . relu(W x + b)`` has the closed form
``attr_i = sum_j (x_i - x'_i) W_ji v_j (relu(z_j) - relu(z'_j)) / (z_j - z'_j)``; completeness says
the attributions sum to ``f(x) - f(x')`` on any network of the supported operations.
"""

from __future__ import annotations

import copy
from typing import Any

import pytest
import torch
import torch.nn.functional as F
import torchvision
from torch import nn

from cnnlens.attribution import create
from cnnlens.attribution.engine.ruled_graph import RuledGraph
from cnnlens.attribution.engine.rules import Call, Grads, Rule
from cnnlens.attribution.methods.deeplift import (
    DEEPLIFT_RULES,
    TINY,
    BilinearSplit,
    MaxPoolSplit,
    Rescale,
)
from cnnlens.errors import InputError
from tests.attribution.test_contract import assert_same, snapshot


class OneHidden(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(1)
        self.l1 = nn.Linear(12, 5)
        self.l2 = nn.Linear(5, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.l2(torch.relu(self.l1(x.flatten(1))))


class Mixed(nn.Module):
    """What stock CNNs do: one in-place ReLU reused, an in-place residual add, an overlapping 3x3/2 max
    pool (module and function), a concatenation with an in-place functional ReLU, squeeze-excitation
    (a product of two input-dependent tensors), Hardswish, batch norm with non-trivial statistics."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.conv1 = nn.Conv2d(3, 8, 3, padding=1)
        self.bn1 = nn.BatchNorm2d(8)
        self.relu = nn.ReLU(inplace=True)
        self.pool = nn.MaxPool2d(3, 2, 1)
        self.conv2 = nn.Conv2d(8, 8, 3, padding=1)
        self.bn2 = nn.BatchNorm2d(8)
        self.conv3 = nn.Conv2d(8, 4, 1)
        self.se = nn.Linear(12, 12)
        self.act = nn.Hardswish()
        self.fc = nn.Linear(12, 3)
        for bn in (self.bn1, self.bn2):
            with torch.no_grad():
                bn.running_mean.uniform_(-0.3, 0.3)
                bn.running_var.uniform_(0.5, 1.5)
        self.eval()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.pool(self.relu(self.bn1(self.conv1(x))))
        out = self.bn2(self.conv2(x))
        out += x
        out = self.relu(out)
        out = torch.cat([out, F.relu(self.conv3(out), inplace=True)], dim=1)
        scale = torch.sigmoid(self.se(out.mean(dim=(2, 3))))
        out = self.act(out * scale[:, :, None, None])
        out = F.max_pool2d(out, 3, 2, 1)
        return self.fc(out.mean(dim=(2, 3)))


def test_rescale_closed_form_on_one_hidden_layer() -> None:
    model = OneHidden().eval()
    x = torch.randn(3, 3, 2, 2, generator=torch.Generator().manual_seed(0))
    base = torch.randn(1, 3, 2, 2, generator=torch.Generator().manual_seed(1))
    exp = create("deeplift", model, baseline=base).explain(x, target=0)
    w, b, v = model.l1.weight.double(), model.l1.bias.double(), model.l2.weight[0].double()
    dx = (x - base).flatten(1).double()
    z, z0 = x.flatten(1).double() @ w.T + b, base.flatten(1).double() @ w.T + b
    m = (z.relu() - z0.relu()) / (z - z0)
    expected = (dx * ((m * v) @ w)).view(3, 3, 2, 2).sum(1)
    assert torch.allclose(exp.attributions.double(), expected, atol=1e-5)


def deeplift_gap(model: nn.Module, rules: tuple[Rule, ...], x: torch.Tensor, base: torch.Tensor) -> float:
    """Relative completeness gap of the target logit 0 under ``rules`` (computed here, not by the method)."""
    graph = RuledGraph(model, rules)
    ref = graph.reference(base)
    point = x.clone().requires_grad_(True)
    out = graph(point)
    (g,) = torch.autograd.grad(out[:, 0].sum(), point)
    total = ((x - base) * g).sum().item()
    diff = (out[:, 0] - ref[:, 0]).sum().item()
    return abs(total - diff) / abs(diff)


def test_complete_on_what_stock_cnns_do() -> None:
    model = Mixed()
    before = snapshot(model)
    x = torch.randn(4, 3, 20, 20, generator=torch.Generator().manual_seed(2))
    exp = create("deeplift", model, baseline="zero").explain(x)
    with torch.no_grad():
        diff = (model(x) - model(torch.zeros_like(x))).gather(1, exp.targets[:, None])[:, 0]
    assert torch.allclose(exp.attributions.sum(dim=(1, 2)), diff, atol=1e-4 * diff.abs().max().item())
    assert (exp.extras["completeness_gap"] <= 1e-4 * diff.abs()).all()
    assert_same(before, snapshot(model))  # no hook, no flag (inplace) changed, nothing added
    shap = create("deeplift_shap", model, n_baselines=3).explain(x)
    assert (shap.extras["completeness_gap"] <= 1e-4 * diff.abs().max()).all()
    assert_same(before, snapshot(model))


class PoolThenGate(nn.Module):
    """``sum(m * sigmoid(mean(m)))`` with ``m`` the overlapping 3x3/2 max pool of the input."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        m = F.max_pool2d(x, 3, 2, 1)
        return (m * torch.sigmoid(m.mean(dim=(2, 3), keepdim=True))).sum(dim=(1, 2, 3))[:, None]


def test_the_max_pool_and_product_rules_are_what_makes_it_complete() -> None:
    """Planted: with the ordinary gradient at the max pool or at the product, completeness fails."""
    x = torch.randn(2, 1, 12, 12, generator=torch.Generator().manual_seed(3))
    base = torch.randn(1, 1, 12, 12, generator=torch.Generator().manual_seed(4))
    assert deeplift_gap(PoolThenGate(), DEEPLIFT_RULES, x, base) < 1e-5
    assert deeplift_gap(PoolThenGate(), (Rescale(), BilinearSplit()), x, base) > 1e-2
    assert deeplift_gap(PoolThenGate(), (Rescale(), MaxPoolSplit()), x, base) > 5e-3


def test_deeplift_shap_is_the_mean_of_deeplift_over_the_baselines() -> None:
    model = Mixed()
    x = torch.randn(2, 3, 20, 20, generator=torch.Generator().manual_seed(4))
    baselines = torch.randn(3, 3, 20, 20, generator=torch.Generator().manual_seed(5))
    shap = create("deeplift_shap", model, baselines=baselines).explain(x, target=1)
    each = [create("deeplift", model, baseline=b).explain(x, target=1).attributions for b in baselines]
    assert torch.allclose(shap.attributions, torch.stack(each).mean(0), atol=1e-5)


class DefinitionRescale(Rescale):
    """The rescale rule as defined, in the backward pass: ``dy / dx``, or autograd's local gradient
    where ``|dx| <= TINY`` (what :meth:`Rescale.multiplier` computes in the forward pass)."""

    def multiplier(self, call: Call) -> None:
        return None

    def backward(self, grad: torch.Tensor, call: Call) -> Grads:
        assert call.reference is not None
        (x0,), y0 = call.reference
        x = call.inputs[0]
        with torch.enable_grad():
            point = x.detach().requires_grad_(True)
            (local,) = torch.autograd.grad(call.compute(point), point, grad)
        ratio = (call.output - y0) / (x - x0) * grad
        return (torch.where((x - x0).abs() <= TINY, local, ratio),)


def test_the_multiplier_kept_from_the_forward_pass_is_the_rescale_rule() -> None:
    """Half of each input equals the baseline, so many units have ``dx == 0`` (the local gradient)."""
    model = Mixed()
    base = torch.randn(1, 3, 20, 20, generator=torch.Generator().manual_seed(6))
    x = base.repeat(3, 1, 1, 1)
    x[:, :, :, 10:] += torch.randn(3, 3, 20, 10, generator=torch.Generator().manual_seed(7))
    grads = []
    for rescale in (Rescale(), DefinitionRescale()):
        graph = RuledGraph(model, (rescale, MaxPoolSplit(), BilinearSplit()))
        graph.reference(base)
        point = x.clone().requires_grad_(True)
        (g,) = torch.autograd.grad(graph(point)[:, 0].sum(), point)
        grads.append(g)
    assert grads[0].abs().max() > 0
    assert torch.allclose(grads[0], grads[1], atol=1e-6, rtol=1e-5)


def test_later_calls_reuse_the_trace_and_reference_until_the_model_or_baseline_changes() -> None:
    model = Mixed()
    x = torch.randn(3, 3, 20, 20, generator=torch.Generator().manual_seed(8))
    images: list[int] = []
    handle = model.conv1.register_forward_pre_hook(lambda _m, args: images.append(len(args[0])))
    traces = []
    method = create("deeplift", model, baseline="zero")
    original = RuledGraph.__init__

    def counting(self: RuledGraph, *args: Any, **kwargs: Any) -> None:
        traces.append(1)
        original(self, *args, **kwargs)

    def run(m: Any = method) -> torch.Tensor:
        images.clear()
        return m.explain(x, target=0).attributions

    try:
        with pytest.MonkeyPatch.context() as patch:
            patch.setattr(RuledGraph, "__init__", counting)
            first = run()
            assert images == [1, 3] and len(traces) == 1  # the reference image, then the inputs
            assert torch.equal(run(), first) and images == [3] and len(traces) == 1
            with torch.no_grad():  # an in-place update (what an optimiser step does)
                model.conv2.weight.mul_(-1.5)
            changed = run()
            assert images == [1, 3] and len(traces) == 2  # traced and referenced again
            assert not torch.allclose(changed, first, atol=1e-3)
            assert torch.allclose(changed, run(create("deeplift", model, baseline="zero")), atol=1e-6)
            model.act = nn.ReLU()  # another module
            swapped = run()
            assert images == [1, 3] and len(traces) == 4  # the fresh method's trace, then this one
            assert torch.allclose(swapped, run(create("deeplift", model, baseline="zero")), atol=1e-6)
            method.baseline = torch.full((3, 20, 20), 0.5)  # another reference image
            assert torch.allclose(run(), run(create("deeplift", model, baseline=method.baseline)), atol=1e-6)
            assert images == [1, 3]
            assert torch.allclose(run(copy.deepcopy(method)), run(), atol=1e-6)  # copies trace their own
    finally:
        handle.remove()


class Branchy(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.flatten(1) if x.sum() > 0 else -x.flatten(1)


def test_untraceable_model_is_one_clear_line() -> None:
    with pytest.raises(InputError, match=r"cannot be traced by torch.fx"):
        create("deeplift", Branchy()).explain(torch.rand(1, 3, 8, 8))


@pytest.mark.slow
@pytest.mark.parametrize("arch", ["resnet50", "vgg16", "densenet121", "timm/efficientnet_lite0"])
def test_complete_on_stock_torchvision_models(arch: str) -> None:
    """... and on timm's EfficientNet-Lite0, whose BatchNormAct2d (BN + ReLU6) timm keeps out of traces."""
    torch.manual_seed(0)
    if arch.startswith("timm/"):
        import timm

        model = timm.create_model(arch[5:], pretrained=False).eval()
    else:
        model = getattr(torchvision.models, arch)().eval()
    before = snapshot(model)
    x = torch.rand(1, 3, 64, 64, generator=torch.Generator().manual_seed(0))
    exp = create("deeplift", model).explain(x)
    with torch.no_grad():
        diff = (model(x) - model(torch.zeros_like(x))).gather(1, exp.targets[:, None])[:, 0]
    assert (exp.extras["completeness_gap"] <= 1e-3 * diff.abs()).all()
    assert_same(before, snapshot(model))


class BiasFree(nn.Module):
    def __init__(self, bn: bool = False) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.features = nn.Sequential(
            nn.Conv2d(3, 6, 3, padding=1, bias=bn),
            *([nn.BatchNorm2d(6)] if bn else []),
            nn.ReLU(),
            nn.Conv2d(6, 6, 3, padding=1, bias=False),
            nn.ReLU(),
        )
        self.fc = nn.Linear(6 * 8 * 8, 3, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.features(x).flatten(1))


@pytest.mark.parametrize("composite", ["epsilon", "epsilon_plus_flat"])
def test_lrp_conserves_relevance_on_a_bias_free_relu_net(composite: str) -> None:
    model = BiasFree().eval()
    x = torch.randn(3, 3, 8, 8, generator=torch.Generator().manual_seed(0))
    exp = create("lrp", model, composite=composite, epsilon=0.0 if composite == "epsilon" else 1e-9).explain(
        x
    )
    with torch.no_grad():
        logit = model(x).gather(1, exp.targets[:, None])[:, 0]
    assert torch.allclose(exp.extras["relevance_sum"], logit, rtol=1e-4)
    assert torch.allclose(exp.attributions.sum(dim=(1, 2)), logit, rtol=1e-4)
    if composite == "epsilon":  # LRP-0 is gradient x input
        gxi = create("gradxinput", model).explain(x, target=exp.targets.tolist()).attributions
        assert torch.allclose(exp.attributions, gxi, atol=1e-5)


def test_lrp_merges_batch_norm_into_the_convolution() -> None:
    """Planted: LRP on conv -> BN equals LRP on the conv with the batch norm folded in by hand."""
    with_bn = BiasFree(bn=True).eval()
    bn = with_bn.features[1]
    with torch.no_grad():
        bn.running_mean.uniform_(-0.2, 0.2)
        bn.running_var.uniform_(0.5, 1.5)
        bn.weight.uniform_(0.5, 1.5)
        bn.bias.uniform_(-0.1, 0.1)
    folded = BiasFree().eval()
    folded.features = nn.Sequential(nn.Conv2d(3, 6, 3, padding=1), *list(with_bn.features)[2:])
    folded.fc = with_bn.fc
    conv = with_bn.features[0]
    scale = bn.weight / (bn.running_var + bn.eps).sqrt()
    with torch.no_grad():
        folded.features[0].weight.copy_(conv.weight * scale[:, None, None, None])
        folded.features[0].bias.copy_((conv.bias - bn.running_mean) * scale + bn.bias)
    before = snapshot(with_bn)
    x = torch.randn(2, 3, 8, 8, generator=torch.Generator().manual_seed(0))
    for composite in ("epsilon_plus_flat", "alpha_beta", "epsilon_gamma_box"):
        a = create("lrp", with_bn, composite=composite).explain(x, target=0).attributions
        b = create("lrp", folded, composite=composite).explain(x, target=0).attributions
        assert torch.allclose(a, b, atol=1e-5), composite
    assert_same(before, snapshot(with_bn))


class TimmResidual(nn.Module):
    """Bias-free stem, one timm ``InvertedResidual`` with its skip (batch norms are timm's
    ``BatchNormAct2d``, eps 1e-3 as in its TensorFlow ports, zero mean and bias so that merging them
    adds no bias), and a bias-free linear head: LRP's rules conserve relevance on it exactly."""

    def __init__(self) -> None:
        super().__init__()
        from timm.models._efficientnet_blocks import InvertedResidual

        torch.manual_seed(0)
        self.stem = nn.Sequential(nn.Conv2d(3, 6, 3, padding=1, bias=False), nn.ReLU())
        self.block = InvertedResidual(6, 6, exp_ratio=2.0, act_layer=nn.ReLU, norm_layer=nn.BatchNorm2d)
        for bn in (m for m in self.block.modules() if isinstance(m, nn.BatchNorm2d)):
            bn.eps = 1e-3
            with torch.no_grad():
                bn.running_var.uniform_(0.5, 1.5)
                bn.weight.uniform_(0.5, 1.5)
        self.fc = nn.Linear(6 * 8 * 8, 3, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.block(self.stem(x)).flatten(1))


def test_lrp_splits_timms_residual_add_and_merges_its_batch_norms() -> None:
    """Planted: on a bias-free network with a timm residual block, the epsilon rule conserves the
    logit only if the add is split by contribution (zennit's ``Sum``); without the canonizer the add
    hands its whole relevance to both inputs. The block's ``BatchNormAct2d`` must be merged (its
    activation is a child, which a plain leaf walk steps into) with eps 0 afterwards, or the
    canonized model's output moves and LRP stops with one line."""
    from cnnlens.attribution.methods.lrp import units

    model = TimmResidual().eval()
    assert model.block.has_skip
    assert [type(m).__name__ for m in units(model, nn.BatchNorm2d)].count("BatchNormAct2d") == 3
    before = snapshot(model)
    x = torch.randn(3, 3, 8, 8, generator=torch.Generator().manual_seed(0))
    # Without the split the sums come out at about twice the logit, for both composites (checked by
    # switching the canonizer off). z+ is exact only where a layer's output is not negative (the
    # block's last convolution, before the add, is not): within 2% here.
    for composite, rtol in (("epsilon", 1e-4), ("epsilon_plus_flat", 0.02)):
        exp = create("lrp", model, composite=composite, epsilon=1e-9).explain(x)
        with torch.no_grad():
            logit = model(x).gather(1, exp.targets[:, None])[:, 0]
        assert torch.allclose(exp.extras["relevance_sum"], logit, rtol=rtol), composite
    assert_same(before, snapshot(model))
    assert model.block.has_skip and all(
        m.eps == 1e-3 for m in model.block.modules() if isinstance(m, nn.BatchNorm2d)
    )
