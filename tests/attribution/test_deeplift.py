"""DeepLIFT, DeepLIFT-SHAP and LRP against closed forms and planted truths.

DeepLIFT's rescale rule on ``v . relu(W x + b)`` has the closed form
``attr_i = sum_j (x_i - x'_i) W_ji v_j (relu(z_j) - relu(z'_j)) / (z_j - z'_j)``; completeness says
the attributions sum to ``f(x) - f(x')`` on any network of the supported operations.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
import torchvision
from torch import nn

from cnnlens.attribution import create
from cnnlens.attribution.engine.ruled_graph import RuledGraph
from cnnlens.attribution.engine.rules import Rule
from cnnlens.attribution.methods.deeplift import DEEPLIFT_RULES, BilinearSplit, MaxPoolSplit, Rescale
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
