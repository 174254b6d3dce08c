"""CAMs on vision transformers: token layers read as grids of patch tokens (cnnlens.models.tokens).

Planted truth: a toy transformer whose logit is ``|A_p|^2 / 2`` for one patch token ``A_p`` of a
layer norm's output. Then ``dy/dA`` is ``A_p`` at patch ``p`` and zero elsewhere, so Grad-CAM's map at
cell ``c`` is ``ReLU(<A_p, A_c>) / (h w)``, which peaks at ``p`` (the tokens have equal norms after the
layer norm), and Ablation-CAM's weights are ``A_pk^2 / |A_p|^2``.
"""

from __future__ import annotations

import logging

import pytest
import timm
import torch
import torch.nn.functional as F
from torch import nn

from cnnlens.attribution import create
from cnnlens.errors import CnnlensError
from cnnlens.models.layers import default_cam_layer
from cnnlens.models.tokens import TokenGrid, TokenLayout, grid_shape
from tests.attribution.test_contract import assert_same, snapshot

SIZE, PATCH, CHANNELS = 32, 8, 8
SIDE = SIZE // PATCH
PLANTED = 6  # row 1, column 2 of the 4 x 4 grid


class Block(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(CHANNELS, elementwise_affine=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.norm1(x)


class ToyViT(nn.Module):
    """Patch embedding, ``prefix`` learned prefix tokens, one block, and a logit that reads one patch
    token only: ``y = |A_p|^2 / 2`` (class 0) and ``-y`` (class 1)."""

    def __init__(self, prefix: int, announce: bool) -> None:
        super().__init__()
        self.patch_embed = nn.Conv2d(3, CHANNELS, PATCH, stride=PATCH)
        self.prefix = nn.Parameter(torch.randn(1, prefix, CHANNELS))
        self.blocks = nn.Sequential(Block())
        if announce:  # timm's attribute; without it the prefix count is found from the token count
            self.num_prefix_tokens = prefix

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        tokens = self.patch_embed(x).flatten(2).transpose(1, 2)
        tokens = torch.cat([self.prefix.expand(x.shape[0], -1, -1), tokens], dim=1)
        token = self.blocks(tokens)[:, self.prefix.shape[1] + PLANTED]
        y = 0.5 * token.pow(2).sum(dim=1)
        return torch.stack([y, -y], dim=1)


def toy(prefix: int, announce: bool) -> ToyViT:
    torch.manual_seed(0)
    return ToyViT(prefix, announce).eval()


def patch_tokens(model: ToyViT, x: torch.Tensor) -> torch.Tensor:
    """The layer norm's patch tokens ``(N, h*w, C)``, by hand."""
    with torch.no_grad():
        tokens = model.patch_embed(x).flatten(2).transpose(1, 2)
        return F.layer_norm(tokens, (CHANNELS,))


def upsampled(grid: torch.Tensor) -> torch.Tensor:
    """``(N, h*w)`` cell values as the explanation's ``(N, SIZE, SIZE)`` map."""
    maps = grid.view(-1, 1, SIDE, SIDE)
    return F.interpolate(maps, size=(SIZE, SIZE), mode="bilinear", align_corners=False)[:, 0]


@pytest.fixture(scope="module")
def x() -> torch.Tensor:
    return torch.rand(2, 3, SIZE, SIZE, generator=torch.Generator().manual_seed(1))


# -- the token grid -------------------------------------------------------------------------------------


def test_grid_puts_token_k_plus_row_w_plus_column_at_its_cell() -> None:
    tokens = torch.arange(2 * 11 * 3, dtype=torch.float32).view(2, 11, 3)  # 3 prefix + 2 x 4 patches
    grid = TokenGrid(3, 2, 4)
    maps, prefix = grid.to_map(tokens)
    assert maps.shape == (2, 3, 2, 4) and prefix.shape == (2, 3, 3)
    for r in range(2):
        for c in range(4):
            assert torch.equal(maps[:, :, r, c], tokens[:, 3 + r * 4 + c])
    assert torch.equal(grid.to_tokens(maps, prefix), tokens)
    assert torch.equal(grid.to_tokens(maps[:1].expand(5, -1, -1, -1), prefix[:1])[4], tokens[0])
    maps[0, 0, 0, 0] = -1  # a copy: the tokens are not changed through the map
    assert tokens[0, 3, 0] == 3 * 3


@pytest.mark.parametrize(
    ("tokens", "prefix", "size", "expected"),
    [
        (197, 1, (224, 224), TokenGrid(1, 14, 14)),  # ViT-B/16: class token
        (198, None, (224, 224), TokenGrid(2, 14, 14)),  # DeiT distilled, count not announced
        (201, 5, (224, 224), TokenGrid(5, 14, 14)),  # class + 4 registers
        (16, 1, (64, 64), TokenGrid(0, 4, 4)),  # patch_embed: before the class token is added
        (281, 1, (224, 320), TokenGrid(1, 14, 20)),  # a wide input
        (13, 1, (64, 64), TokenGrid(4, 3, 3)),  # 12 = 3 x 4 patches do not tile a square input
        (14, None, (32, 64), TokenGrid(6, 2, 4)),  # ...but 8 = 2 x 4 tile a wide one
        (14, None, None, TokenGrid(5, 3, 3)),  # input size unknown: a square grid
        (117, None, (224, 224), None),  # no grid within MAX_PREFIX = 10 prefix tokens (100 = 117 - 17)
    ],
)
def test_grid_found_from_the_token_count(
    tokens: int, prefix: int | None, size: tuple[int, int] | None, expected: TokenGrid | None
) -> None:
    assert TokenGrid.find(tokens, prefix=prefix, input_size=size) == expected


def test_grid_shape_needs_square_patches() -> None:
    assert grid_shape(8, (32, 64)) == (2, 4)
    assert grid_shape(8, (64, 64)) is None
    assert grid_shape(0, (64, 64)) is None


# -- planted truth on the toy ---------------------------------------------------------------------------


@pytest.mark.parametrize(("prefix", "announce"), [(1, True), (1, False), (5, True), (5, False)])
def test_gradcam_map_peaks_at_the_one_patch_the_logit_reads(
    x: torch.Tensor, prefix: int, announce: bool
) -> None:
    model = toy(prefix, announce)
    assert default_cam_layer(model, (SIZE, SIZE)) == "blocks.0.norm1"
    before = snapshot(model)
    exp = create("gradcam", model).explain(x, target=0)
    assert_same(before, snapshot(model))
    a = patch_tokens(model, x)
    expected = torch.relu(torch.einsum("nc,ntc->nt", a[:, PLANTED], a)) / SIDE**2
    assert exp.layer == "blocks.0.norm1"
    torch.testing.assert_close(exp.attributions, upsampled(expected), atol=1e-5, rtol=1e-4)
    # the peak is the planted patch's cell (row 1, column 2)
    assert (expected.argmax(dim=1) == PLANTED).all()
    for m in exp.attributions:
        row, col = divmod(int(m.argmax()), SIZE)
        assert (row // PATCH, col // PATCH) == divmod(PLANTED, SIDE)


def test_layercam_is_zero_away_from_the_planted_patch(x: torch.Tensor) -> None:
    model = toy(1, True)
    exp = create("layercam", model, layer="blocks.0.norm1").explain(x, target=0)
    a = patch_tokens(model, x)
    expected = torch.zeros(2, SIDE**2)
    expected[:, PLANTED] = a[:, PLANTED].clamp(min=0).pow(2).sum(1)  # ReLU(g) A with g = A there
    torch.testing.assert_close(exp.attributions, upsampled(expected), atol=1e-5, rtol=1e-4)


def test_ablationcam_weights_are_the_planted_closed_form(x: torch.Tensor) -> None:
    model = toy(1, True)
    before = snapshot(model)
    exp = create("ablationcam", model).explain(x, target=0)
    assert_same(before, snapshot(model))
    a = patch_tokens(model, x)
    weights = a[:, PLANTED].pow(2) / a[:, PLANTED].pow(2).sum(1, keepdim=True)
    expected = torch.relu(torch.einsum("nc,ntc->nt", weights, a))
    assert exp.extras["split"] is True
    torch.testing.assert_close(exp.attributions, upsampled(expected), atol=1e-5, rtol=1e-4)


# -- a timm ViT ---------------------------------------------------------------------------------------

CAMS = (
    "gradcam",
    "gradcampp",
    "layercam",
    "scorecam",
    "ablationcam",
    "layer_gradxact",
    "layer_ig",
    "layer_gradshap",
)


def vit(**kwargs: object) -> nn.Module:
    torch.manual_seed(0)
    args: dict[str, object] = {"img_size": SIZE, "depth": 2} | kwargs
    return timm.create_model("vit_tiny_patch16_224", pretrained=False, **args).eval()


@pytest.mark.parametrize("reg_tokens", [0, 4])
def test_every_cam_runs_on_a_timm_vit_at_its_last_norm1(x: torch.Tensor, reg_tokens: int) -> None:
    model = vit(reg_tokens=reg_tokens)
    assert model.num_prefix_tokens == 1 + reg_tokens
    for name in CAMS:
        before = snapshot(model)
        params = {"steps": 4} if name == "layer_ig" else {"n_samples": 4} if name == "layer_gradshap" else {}
        exp = create(name, model, **params).explain(x)
        assert_same(before, snapshot(model))
        assert exp.layer == "blocks.1.norm1", name
        assert exp.attributions.shape == (2, SIZE, SIZE), name
        assert torch.isfinite(exp.attributions).all(), name


def test_a_wide_input_gives_a_wide_grid() -> None:
    model = vit(dynamic_img_size=True)
    x = torch.rand(1, 3, SIZE, 2 * SIZE, generator=torch.Generator().manual_seed(2))
    acts: list[torch.Tensor] = []
    layout = TokenLayout.of(model, (SIZE, 2 * SIZE))
    handle = model.blocks[1].norm1.register_forward_hook(lambda _m, _i, o: acts.append(o))
    try:
        exp = create("gradcam", model).explain(x)
    finally:
        handle.remove()
    grid = layout.grid(acts[0])
    assert grid == TokenGrid(1, 2, 4)
    assert exp.attributions.shape == (1, SIZE, 2 * SIZE)


def test_cam_on_a_vit_applies_to_a_linear_head_over_the_mean_patch_token(x: torch.Tensor) -> None:
    with pytest.raises(CnnlensError, match=r"reads the class token \(global_pool='token'\)"):
        create("cam", vit())
    model = vit(global_pool="avg", fc_norm=False)  # logits = head(mean of norm's patch tokens)
    exp = create("cam", model, layer="norm").explain(x)  # the identity is checked on every batch
    assert exp.attributions.shape == (2, SIZE, SIZE)
    with pytest.raises(CnnlensError, match="CAM needs logits = W @ global_average_pool"):
        create("cam", model).explain(x)  # blocks.1.norm1: attention and MLP before the head


def test_a_failed_split_logs_one_line_and_no_fx_traceback(
    x: torch.Tensor, capsys: pytest.CaptureFixture[str], caplog: pytest.LogCaptureFixture
) -> None:
    model = vit()  # inside attention the traced graph keeps the batch size it saw: the split fails
    with caplog.at_level(logging.WARNING, logger="cnnlens"):
        exp = create("ablationcam", model, layer="blocks.1.attn.k_norm").explain(x[:1])
    assert exp.extras["split"] is False
    captured = capsys.readouterr()
    assert "Traceback" not in captured.err + captured.out and "FX-traced" not in captured.err
    records = [r.getMessage() for r in caplog.records]
    assert len(records) == 1 and "\n" not in records[0] and "cannot split" in records[0]


def test_the_command_line_accepts_a_token_layer_and_refuses_the_head() -> None:
    from cnnlens.cli.common import check_feature_map_layer
    from cnnlens.models import load_model

    model = load_model("vit_tiny_patch16_224", pretrained=False)
    assert model.default_layer == "blocks.11.norm1"
    check_feature_map_layer(model, "blocks.3.norm1", tokens=True)  # class token + 14 x 14 patches
    check_feature_map_layer(model, "blocks.3", tokens=True)
    with pytest.raises(CnnlensError, match="not a .N, C, h, w. feature map or tokens on a grid"):
        check_feature_map_layer(model, "head", tokens=True)
    with pytest.raises(CnnlensError, match="not a .N, C, h, w. feature map"):  # the probing tools
        check_feature_map_layer(model, "blocks.3")
