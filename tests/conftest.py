"""Shared fixtures: tiny models with known structure, and the real offline default model."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from cnnlens.data.transforms import Preprocessing
from cnnlens.models import LoadedModel

torch.set_num_threads(1)


def requires(*names: str) -> pytest.MarkDecorator:
    """Skip a test of a fast path where this machine lacks one of the capabilities it runs on; the
    reason names the capability and the probe's own error. A separate test covers the fallback."""
    from cnnlens import capabilities

    missing = [capabilities.probe(n) for n in names if not capabilities.available(n)]
    reason = "; ".join(f"needs capability {p.name} ({p.reason})" for p in missing)
    return pytest.mark.skipif(bool(missing), reason=reason or "all present")


class TinyCNN(nn.Module):
    """conv-BN-ReLU(inplace)-conv-ReLU(inplace) features, global average pool, linear head.

    The ReLU module of the first block is used twice (once after each conv), which the guided
    rules must cope with.
    """

    def __init__(self, classes: int = 3, channels: int = 3) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(channels, 4, 3, padding=1)
        self.bn1 = nn.BatchNorm2d(4)
        self.relu = nn.ReLU(inplace=True)
        self.features = nn.Sequential(nn.Conv2d(4, 6, 3, padding=1, stride=2), nn.ReLU(inplace=True))
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(6, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.relu(self.bn1(self.conv1(x)))
        x = self.features(x)
        return self.fc(self.pool(x).flatten(1))


class FailOnCall(nn.Module):
    """Wraps a model and raises on the n-th forward call (to test clean-up after errors)."""

    def __init__(self, inner: nn.Module, fail_at: int = 2) -> None:
        super().__init__()
        self.inner = inner
        self.fail_at = fail_at
        self.calls = 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.calls += 1
        out = self.inner.features(self.inner.relu(self.inner.bn1(self.inner.conv1(x))))
        if self.calls >= self.fail_at:
            raise RuntimeError("injected failure")
        return self.inner.fc(self.inner.pool(out).flatten(1))


def tiny_loaded(seed: int = 0, classes: int = 3) -> LoadedModel:
    torch.manual_seed(seed)
    module = TinyCNN(classes).eval()
    with torch.no_grad():  # non-trivial batch-norm statistics
        module.bn1.running_mean.uniform_(-0.2, 0.2)
        module.bn1.running_var.uniform_(0.5, 1.5)
    return LoadedModel(
        module=module,
        name="tiny",
        arch="tiny",
        class_names=["cat", "dog", "bird"][:classes] + [f"c{i}" for i in range(3, classes)],
        preprocessing=Preprocessing(resize=None, crop=32, mean=(0.5,) * 3, std=(0.25,) * 3),
        default_layer="features",
        source="test",
    )


class FailAt(nn.Module):
    """Wraps a module and raises on its n-th call."""

    def __init__(self, inner: nn.Module, fail_at: int) -> None:
        super().__init__()
        self.inner = inner
        self.fail_at = fail_at
        self.calls = 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.calls += 1
        if self.calls >= self.fail_at:
            raise RuntimeError("injected failure")
        out: torch.Tensor = self.inner(x)
        return out


def tiny_spn_loaded(seed: int = 0, classes: int = 3, fail_at: int | None = None) -> LoadedModel:
    """A small saliency-aware network (F-Net of two convs, C-Net, SPN) on 32 px inputs."""
    from cnnlens.models.saliency_net import SaliencyAwareNet

    torch.manual_seed(seed)
    features: nn.Module = nn.Sequential(
        nn.Conv2d(3, 4, 3, padding=1),
        nn.BatchNorm2d(4),
        nn.ReLU(inplace=True),
        nn.Conv2d(4, 6, 3, padding=1, stride=2),
        nn.ReLU(inplace=True),
    )
    if fail_at is not None:
        features = FailAt(features, fail_at)
    module = SaliencyAwareNet(features, 6, classes, 32, 16, hidden=16).eval()
    return LoadedModel(
        module=module,
        name="tiny-spn",
        arch="tiny-spn",
        class_names=["cat", "dog", "bird"][:classes],
        preprocessing=Preprocessing(resize=None, crop=32, mean=(0.5,) * 3, std=(0.25,) * 3),
        default_layer="features",
        source="test",
    )


@pytest.fixture
def tiny() -> LoadedModel:
    return tiny_loaded()


@pytest.fixture
def images() -> torch.Tensor:
    return torch.randn(3, 3, 32, 32, generator=torch.Generator().manual_seed(1))


@pytest.fixture(scope="session")
def lite0() -> LoadedModel:
    from cnnlens.models import load_model

    return load_model("efficientnet_lite0")
