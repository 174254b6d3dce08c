"""The evaluation engine: splitting a network at a layer, precision and batch-size choices."""

from __future__ import annotations

import logging
from collections.abc import Callable

import pytest
import torch
from torch import nn

from cnnlens import capabilities
from cnnlens.attribution.engine.batching import auto_batch_size
from cnnlens.attribution.engine.precision import resolve_precision
from cnnlens.attribution.engine.split import LayerSplit
from cnnlens.models import LoadedModel
from cnnlens.models.layers import resolve_layer
from tests.conftest import requires, tiny_loaded


def swapped_reference(
    module: nn.Module, layer: nn.Module, x: torch.Tensor, acts: torch.Tensor
) -> torch.Tensor:
    """The whole network run on ``x`` repeated, with the layer's output replaced by ``acts``."""
    handle = layer.register_forward_hook(lambda _m, _i, _o: acts)
    try:
        return module(x.expand(len(acts), *x.shape[1:]))
    finally:
        handle.remove()


def check_split(module: nn.Module, name: str, size: int) -> LayerSplit:
    module.eval()
    x = torch.randn(1, 3, size, size, generator=torch.Generator().manual_seed(0))
    _, layer = resolve_layer(module, name)
    split = LayerSplit(module, name, layer, check=x)
    assert split.split, f"{type(module).__name__} could not be split at {name}"
    with torch.inference_mode():
        head = split.head(x)
        assert torch.allclose(split.tail(head.activation.clone(), head), module(x), atol=1e-4)
        noise = torch.randn(4, *head.activation.shape[1:], generator=torch.Generator().manual_seed(1))
        acts = head.activation * (noise > 0)  # a batch of different modified activations
        expected = swapped_reference(module, layer, x, acts.clone())
        assert torch.allclose(split.tail(acts.clone(), head), expected, atol=1e-4, rtol=1e-4)
    return split


def test_split_tiny() -> None:
    module = tiny_loaded().module
    for name in ("features", "conv1", "bn1"):
        check_split(module, name, 32)


def test_split_resnet18() -> None:
    from torchvision.models import resnet18

    module = resnet18(weights=None)
    for name in (
        "layer4",
        "layer3.0.conv1",
        "layer2.1.bn2",
    ):  # inside a block: the skip input is carried over
        check_split(module, name, 64)


def test_split_timm_efficientnet_lite0() -> None:
    import timm

    module = timm.create_model("tf_efficientnet_lite0", pretrained=False)
    for name in ("blocks.5", "blocks.3.0.conv_pw", "conv_head"):
        check_split(module, name, 64)


def test_prefix_runs_once() -> None:
    module = tiny_loaded().module
    calls = []
    handle = module.conv1.register_forward_hook(lambda *_: calls.append(1))
    try:
        split = check_split(module, "features", 32)
        calls.clear()
        with torch.inference_mode():
            head = split.head(torch.randn(1, 3, 32, 32))
            for _ in range(3):
                split.tail(head.activation.expand(5, -1, -1, -1).clone(), head)
    finally:
        handle.remove()
    assert len(calls) == 1


class DataDependent(nn.Module):
    """Python control flow on tensor values: torch.fx cannot trace it."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3, padding=1)
        self.fc = nn.Linear(4, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        a = self.conv(x)
        if a.mean() > 100:  # never true, but untraceable
            a = a * 2
        return self.fc(a.mean(dim=(2, 3)))


def test_untraceable_model_falls_back_and_says_so(caplog: pytest.LogCaptureFixture) -> None:
    module = DataDependent().eval()
    x = torch.randn(1, 3, 16, 16)
    with caplog.at_level(logging.WARNING, logger="cnnlens.attribution.engine.split"):
        split = LayerSplit(module, "conv", module.conv, check=x)
    assert not split.split and split.mode == "hook"  # verified on x: faster than re-running it all
    assert "cannot split DataDependent at 'conv'" in caplog.text
    assert "swapping the layer's output in a whole-network pass" in caplog.text
    with caplog.at_level(logging.WARNING, logger="cnnlens.attribution.engine.split"):
        unchecked = LayerSplit(module, "conv", module.conv)  # without a check: never the hook mode
    assert unchecked.mode == "full" and "re-running the whole network" in caplog.text
    with torch.inference_mode():
        head = split.head(x)
        acts = head.activation.expand(3, -1, -1, -1) * torch.tensor([0.0, 1.0, 2.0]).view(3, 1, 1, 1)
        got = split.tail(acts.clone(), head)
        expected = module.fc(acts.mean(dim=(2, 3)))
    assert torch.allclose(got, expected, atol=1e-5)


def test_auto_batch_size_and_precision() -> None:
    module = tiny_loaded().module.eval()
    size = auto_batch_size(module, torch.randn(2, 3, 32, 32))
    assert 1 <= size <= 64
    cpu = torch.device("cpu")
    assert resolve_precision("fp32", cpu, bf16_faithful=True) == "fp32"
    if capabilities.available("bf16_autocast"):
        assert resolve_precision("bf16", cpu, bf16_faithful=False) == "bf16"
    assert resolve_precision("auto", cpu, bf16_faithful=False) == "fp32"
    with pytest.raises(ValueError, match="precision must be one of"):
        resolve_precision("half", cpu, bf16_faithful=True)


@requires("bf16_native")
def test_bf16_path_runs_and_stays_close(images: torch.Tensor) -> None:
    from cnnlens.attribution import create

    model = tiny_loaded()
    fp32 = create("occlusion", model, window=8, stride=8, precision="fp32").explain(images)
    bf16 = create("occlusion", model, window=8, stride=8, precision="bf16").explain(images)
    assert fp32.params["computed_in"] == "fp32"
    assert bf16.params["precision"] == "bf16" and bf16.params["computed_in"] == "bf16"
    auto = create("occlusion", model, window=8, stride=8).explain(images[:1])
    assert auto.params["precision"] == "auto"  # what was asked, and what it became here:
    assert auto.params["computed_in"] == resolve_precision("auto", torch.device("cpu"), True)
    assert "computed_in" not in create("cam", model).explain(images).params  # takes no precision
    corr = torch.corrcoef(torch.stack([fp32.attributions.flatten(), bf16.attributions.flatten()]))[0, 1]
    assert corr > 0.9


def test_auto_batch_size_gives_the_same_maps(images: torch.Tensor) -> None:
    from cnnlens.attribution import create

    model = tiny_loaded()
    auto = create("rise", model, n_masks=24, batch_size="auto").explain(images)
    fixed = create("rise", model, n_masks=24, batch_size=5).explain(images)
    assert torch.allclose(auto.attributions, fixed.attributions, atol=1e-5)


def test_bf16_is_native_is_the_capability_probe(monkeypatch: pytest.MonkeyPatch) -> None:
    from cnnlens import capabilities
    from cnnlens.attribution.engine import precision as engine

    cpu = torch.device("cpu")
    for native in (False, True):
        monkeypatch.setattr(capabilities, "available", lambda name, device="cpu", v=native: v)
        assert engine.bf16_is_native(cpu) is native
        assert resolve_precision("auto", cpu, True) == ("bf16" if native else "fp32")
        assert resolve_precision("auto", cpu, False) == "fp32"  # not faithful: never bf16


def test_memory_format_is_an_option_that_leaves_the_maps_alone(images: torch.Tensor) -> None:
    from cnnlens.attribution import create, get_method

    model = tiny_loaded()
    maps = {
        fmt: create("occlusion", model, window=8, stride=8, precision="fp32", memory_format=fmt)
        .explain(images)
        .attributions
        for fmt in ("auto", "channels_last", "contiguous")
    }
    assert torch.allclose(maps["auto"], maps["contiguous"], atol=1e-5)
    assert torch.allclose(maps["channels_last"], maps["contiguous"], atol=1e-5)
    method = create("saliency", model)
    assert method.passes.layout(gradients=True) == "contiguous"
    assert method.passes.layout(gradients=False) == "channels_last"
    assert create("saliency", model, memory_format="channels_last").passes.layout(gradients=True) == (
        "channels_last"
    )
    assert "memory_format" in get_method("rise").hyperparameters()
    assert "memory_format" not in get_method("cam").hyperparameters()
    with pytest.raises(ValueError, match="memory_format must be one of"):
        create("rise", model, memory_format="nhwc")


def test_channels_last_inputs_reach_the_network(images: torch.Tensor) -> None:
    from cnnlens.attribution import create

    model = tiny_loaded()
    layouts: list[bool] = []
    handle = model.module.register_forward_pre_hook(
        lambda _m, args: layouts.append(args[0].is_contiguous(memory_format=torch.channels_last))
    )
    try:
        create("rise", model, n_masks=8, precision="fp32").explain(images[:1])
        assert layouts[-1]  # the perturbed batches: channels_last under auto
        layouts.clear()
        create("rise", model, n_masks=8, precision="fp32", memory_format="contiguous").explain(images[:1])
        assert not any(layouts[1:])
    finally:
        handle.remove()


class Ends(nn.Module):
    """At 16 px: the stem, a plain conv, a pointwise conv on 4 channels, a depthwise conv; a stride-8
    conv to 2 px, a depthwise conv there; a token-wise linear on ``(N, 4, 4)`` and a linear head."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, 4, 3, padding=1)
        self.full = nn.Conv2d(4, 4, 3, padding=1)
        self.pw = nn.Conv2d(4, 4, 1)
        self.dw = nn.Conv2d(4, 4, 3, padding=1, groups=4)
        self.down = nn.Conv2d(4, 4, 8, stride=8)
        self.mid = nn.Conv2d(4, 4, 3, padding=1, groups=4)
        self.tokens = nn.Linear(4, 4)
        self.fc = nn.Linear(4, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        a = self.mid(self.down(self.dw(self.pw(self.full(self.stem(x))))))
        return self.fc(self.tokens(a.flatten(2).transpose(1, 2)).mean(1))


def dtypes_under(module: nn.Module, run: Callable[[], object]) -> dict[str, torch.dtype]:
    seen: dict[str, torch.dtype] = {}
    handles = [
        m.register_forward_hook(lambda _m, _a, out, name=name: seen.__setitem__(name, out.dtype))
        for name, m in module.named_children()
    ]
    try:
        run()
    finally:
        for h in handles:
            h.remove()
    return seen


def test_fp32_ends_keep_the_stem_and_the_head_in_float32() -> None:
    from cnnlens.attribution.engine.precision import precision_context
    from cnnlens.models.hooks import hook_counts

    model, cpu = Ends().eval(), torch.device("cpu")
    x = torch.randn(2, 3, 16, 16)

    def run(module: nn.Module | None) -> Callable[[], object]:
        def go() -> object:
            with torch.inference_mode(), precision_context("bf16", cpu, module):
                # 8 dtype probes, plus 1 + 2 per conv/linear with the module
                assert hook_counts(model) == 8 + (0 if module is None else 17)
                return model(x)

        return go

    ends = dtypes_under(model, run(model))
    f32, b16 = torch.float32, torch.bfloat16
    assert ends == {
        "stem": f32,  # reads the image
        "full": b16,  # full resolution, but 36 products per output
        "pw": f32,  # 4 products per output
        "dw": f32,  # depthwise at >= a quarter of the resolution
        "down": b16,
        "mid": b16,  # depthwise, but at an eighth of the input size
        "tokens": b16,  # a linear on tokens, not a head
        "fc": f32,  # the head
    }
    plain = dtypes_under(model, run(None))  # without the module: the whole network in bf16
    assert set(plain.values()) == {torch.bfloat16}
    assert hook_counts(model) == 0
    with torch.inference_mode(), precision_context("bf16", cpu, model):  # a pass not starting at model
        assert model.dw(torch.randn(1, 4, 16, 16)).dtype == torch.bfloat16  # no network input seen
        assert model.fc(torch.randn(1, 4)).dtype == torch.float32
    with torch.inference_mode(), precision_context("fp32", cpu, model):
        assert model(x).dtype == torch.float32 and hook_counts(model) == 0


@pytest.mark.parametrize("where", ["mid", "stem"])  # in the bf16 middle, or inside a float32 layer
def test_fp32_ends_leave_autocast_as_found_after_an_error(where: str) -> None:
    from cnnlens.attribution.engine.precision import precision_context
    from cnnlens.models.hooks import hook_counts

    model, cpu = Ends().eval(), torch.device("cpu")

    def boom(_m: nn.Module, _a: object, _o: object) -> None:
        raise RuntimeError("boom")

    handle = model.get_submodule(where).register_forward_hook(boom)  # runs before the policy's hook
    try:
        with pytest.raises(RuntimeError, match="boom"), precision_context("bf16", cpu, model):
            model(torch.randn(1, 3, 16, 16))
    finally:
        handle.remove()
    assert not torch.is_autocast_enabled("cpu")
    assert hook_counts(model) == 0


@pytest.mark.slow
def test_fp32_ends_bring_lite0_scores_closer_to_float32(lite0: LoadedModel) -> None:
    """The reason for the policy, on the offline EfficientNet-Lite0: bf16 score errors shrink (measured
    0.022 -> 0.006 mean absolute error of the target probability on these 12 perturbations)."""
    from cnnlens.attribution.engine.precision import precision_context
    from cnnlens.data import load_sample

    model = lite0
    module, cpu = model.module.eval(), torch.device("cpu")
    x = model.prepare(load_sample("chelsea"))
    cells = (torch.rand(12, 1, 7, 7, generator=torch.Generator().manual_seed(0)) > 0.5).float()
    batch = x * nn.functional.interpolate(cells, size=x.shape[-2:], mode="nearest")
    with torch.inference_mode():
        ref = module(batch)
        target = int(ref[0].argmax())
        errors = {}
        for label, ends in (("plain", None), ("ends", module)):
            with precision_context("bf16", cpu, ends):
                out = module(batch).float()
            errors[label] = (out.softmax(1)[:, target] - ref.softmax(1)[:, target]).abs().mean().item()
    assert errors["ends"] < 0.6 * errors["plain"], errors
