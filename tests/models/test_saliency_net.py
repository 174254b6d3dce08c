"""Seed 004's saliency-aware network: SPN sizes and the partial-mask loss."""

from __future__ import annotations

import pytest
import torch

from cnnlens.models import build_architecture
from cnnlens.models.saliency_net import build_saliency_net, localisation_loss, spn_blocks


@pytest.mark.parametrize(
    ("arch", "size"),
    [
        ("resnet18", 64),
        ("resnet18", 96),
        ("resnet18", 80),
        ("tf_efficientnet_lite0", 64),
        ("mobilenet_v3_small", 64),
    ],
)
def test_spn_output_has_the_input_size(arch: str, size: int) -> None:
    backbone = build_architecture(arch, pretrained=False)[0]
    net = build_saliency_net(backbone, num_classes=3, input_size=size).eval()
    x = torch.randn(2, 3, size, size)
    logits, sal = net.forward_with_saliency(x)
    assert logits.shape == (2, 3)
    assert sal is not None
    assert sal.shape == (2, 1, size, size)
    assert torch.allclose(net(x), logits)
    with torch.no_grad():
        prob = net.saliency(x)
    assert prob.shape == (2, size, size)
    assert float(prob.min()) >= 0
    assert float(prob.max()) <= 1


def _blocks(net: torch.nn.Module) -> int:
    spn = net.spn
    assert spn is not None
    return sum(isinstance(m, torch.nn.Upsample) for m in spn.blocks)


@pytest.mark.parametrize(
    ("arch", "size", "feature", "blocks"),
    [
        ("resnet34", 224, 7, 4),  # the seed's 7x7 -> 224x224
        ("resnet50", 224, 7, 4),
        ("vgg11", 224, 7, 4),
        ("resnet34", 97, 4, 4),  # odd sizes: 97 -> 4x4 (ResNet), 3x3 (VGG)
        ("resnet50", 97, 4, 4),
        ("vgg11", 97, 3, 4),
        ("resnet18", 65, 3, 3),
        ("tf_efficientnet_lite0", 224, 7, 4),
    ],
)
def test_spn_size_and_blocks_per_backbone(arch: str, size: int, feature: int, blocks: int) -> None:
    """Random weights (no download); one image; the SPN map has the input's size at every size."""
    torch.manual_seed(0)
    backbone = build_architecture(arch, pretrained=False)[0]
    net = build_saliency_net(backbone, num_classes=2, input_size=size).eval()
    x = torch.randn(1, 3, size, size)
    with torch.no_grad():
        fmap = net.features(x)
        logits, sal = net.forward_with_saliency(x)
    assert fmap.shape[-2:] == (feature, feature)
    assert _blocks(net) == blocks == spn_blocks(size, feature)
    assert logits.shape == (1, 2)
    assert sal is not None and sal.shape == (1, 1, size, size)


def test_block_count_follows_the_resolution() -> None:
    assert spn_blocks(224, 7) == 4  # seed 004: four x2 blocks, then a final step to 224
    assert spn_blocks(64, 2) == 4
    assert spn_blocks(32, 32) == 0
    with pytest.raises(ValueError, match="between 1 and the input side"):
        spn_blocks(32, 64)


def test_baseline_has_no_spn() -> None:
    net = build_saliency_net(build_architecture("resnet18", pretrained=False)[0], 2, 64, with_spn=False)
    assert net.spn is None
    assert net.forward_with_saliency(torch.randn(1, 3, 64, 64))[1] is None
    with pytest.raises(ValueError, match="without a saliency prediction net"):
        net.saliency(torch.randn(1, 3, 64, 64))


@pytest.mark.parametrize("kind", ["ce", "l1", "l2"])
def test_images_without_a_mask_contribute_no_gradient(kind: str) -> None:
    torch.manual_seed(0)
    pred = torch.randn(4, 1, 8, 8, requires_grad=True)
    masks = (torch.rand(4, 1, 8, 8) > 0.5).float()
    has = torch.tensor([True, False, True, False])
    loss = localisation_loss(pred, masks, has, kind)
    (grad,) = torch.autograd.grad(loss, pred)
    assert grad[has].abs().sum() > 0
    assert torch.equal(grad[~has], torch.zeros_like(grad[~has]))
    # the value is the loss of the masked images alone
    alone = localisation_loss(pred[has], masks[has], torch.ones(2, dtype=torch.bool), kind)
    assert torch.allclose(loss, alone)


def test_no_mask_in_the_batch_gives_zero() -> None:
    pred = torch.randn(2, 1, 4, 4, requires_grad=True)
    loss = localisation_loss(pred, torch.zeros(2, 4, 4), torch.zeros(2, dtype=torch.bool))
    assert float(loss.detach()) == 0.0
    (grad,) = torch.autograd.grad(loss, pred)
    assert float(grad.abs().sum()) == 0.0


def test_loss_closed_forms_and_errors() -> None:
    pred = torch.zeros(1, 1, 2, 2)  # sigmoid = 0.5 everywhere
    mask = torch.tensor([[[[1.0, 0.0], [1.0, 1.0]]]])
    has = torch.ones(1, dtype=torch.bool)
    assert torch.isclose(localisation_loss(pred, mask, has, "l1"), torch.tensor(0.5))
    assert torch.isclose(localisation_loss(pred, mask, has, "l2"), torch.tensor(0.25))
    assert torch.isclose(localisation_loss(pred, mask, has, "ce"), torch.log(torch.tensor(2.0)))
    with pytest.raises(ValueError, match="unknown localisation loss"):
        localisation_loss(pred, mask, has, "dice")
    with pytest.raises(ValueError, match="does not match the SPN output"):
        localisation_loss(pred, torch.zeros(1, 1, 3, 3), has)


@pytest.mark.parametrize(
    ("arch", "until"),
    [
        ("resnet50", "features.layer3"),  # layer4 trains
        ("vgg11", "features.15"),  # the last conv block (features.16, features.18) trains
        ("tf_efficientnet_lite0", "features.model.blocks.4"),  # blocks 5, 6 and conv_head train
    ],
)
def test_last_stage_of_the_f_net(arch: str, until: str) -> None:
    """The default freeze of saliency-aware training leaves each F-Net's last stage trainable."""
    from cnnlens.training import last_stage

    net = build_saliency_net(build_architecture(arch, pretrained=False)[0], 2, 64)
    assert last_stage(net, ["classifier", "spn"], 64) == until
