"""Token layers of vision transformers seen as feature maps: ``(N, T, C)`` tokens <-> ``(N, C, h, w)``.

A ViT layer outputs ``T = k + h * w`` tokens of ``C`` channels: ``k`` prefix tokens (class, register,
distillation) and then one token per image patch, row by row. The CAM-family methods need a
``(N, C, h, w)`` feature map; :class:`TokenGrid` drops the prefix tokens and lays the patch tokens out
on their grid (and back, for the methods that run the network on modified feature maps).

``k`` is timm's ``num_prefix_tokens`` when the model has it (a layer before the class token is added,
such as ``patch_embed``, has none: then ``k = 0`` is tried), else the smallest ``k`` (at most
:data:`MAX_PREFIX`) that leaves a grid of the input's aspect ratio (a square for a square input).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn

#: The most prefix tokens assumed when the model does not say (timm: class, distillation and up to
#: eight register tokens).
MAX_PREFIX = 10


def prefix_tokens(model: nn.Module) -> int | None:
    """timm's ``num_prefix_tokens`` of ``model`` (class + register + distillation tokens), if it has one."""
    value = getattr(model, "num_prefix_tokens", None)
    return value if isinstance(value, int) and not isinstance(value, bool) and value >= 0 else None


def grid_shape(patches: int, input_size: tuple[int, int] | None) -> tuple[int, int] | None:
    """``(h, w)`` with ``h * w == patches`` and patches of the same size in both directions (to a pixel)
    on an input of ``input_size``, or a square when the input size is unknown; ``None`` when there is
    no such grid."""
    if patches < 1:
        return None
    if input_size is None:
        side = math.isqrt(patches)
        return (side, side) if side * side == patches else None
    height, width = input_size
    h = max(1, round(math.sqrt(patches * height / width)))
    w = patches // h
    if h * w != patches or abs(height / h - width / w) > 1:
        return None
    return h, w


@dataclass(frozen=True)
class TokenGrid:
    """How ``(N, T, C)`` tokens map to a ``(N, C, h, w)`` grid: ``prefix`` tokens first, then ``h * w``
    patch tokens row by row."""

    prefix: int
    height: int
    width: int

    @classmethod
    def find(
        cls, tokens: int, *, prefix: int | None = None, input_size: tuple[int, int] | None = None
    ) -> TokenGrid | None:
        """The grid of ``tokens`` tokens: with ``prefix`` (the model's count) tried first, then no
        prefix, then the smallest count up to :data:`MAX_PREFIX` that leaves a grid; ``None`` when
        nothing does."""
        candidates = ([prefix, 0] if prefix is not None else []) + list(range(min(tokens, MAX_PREFIX + 1)))
        for k in dict.fromkeys(candidates):
            shape = grid_shape(tokens - k, input_size) if 0 <= k < tokens else None
            if shape is not None:
                return cls(k, *shape)
        return None

    def to_map(self, tokens: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``(N, C, h, w)`` patch tokens on their grid (a new tensor) and the ``(N, k, C)`` prefix tokens."""
        n, _, c = tokens.shape
        patches = tokens[:, self.prefix :].transpose(1, 2).clone(memory_format=torch.contiguous_format)
        return patches.view(n, c, self.height, self.width), tokens[:, : self.prefix]

    def to_tokens(self, maps: torch.Tensor, prefix: torch.Tensor) -> torch.Tensor:
        """The inverse of :meth:`to_map`: ``(B, T, C)`` tokens from ``(B, C, h, w)`` maps and the prefix
        tokens (``(B, k, C)``, or ``(1, k, C)`` broadcast over the batch)."""
        patches = maps.flatten(2).transpose(1, 2)
        return torch.cat([prefix.expand(len(maps), *prefix.shape[1:]).to(patches.dtype), patches], dim=1)


@dataclass(frozen=True)
class TokenLayout:
    """What a model says about its token layers: the prefix count (``None``: unknown) and the input's
    ``(H, W)`` (``None``: unknown, square grids only)."""

    prefix: int | None = None
    input_size: tuple[int, int] | None = None

    @classmethod
    def of(cls, model: nn.Module, input_size: tuple[int, int] | None = None) -> TokenLayout:
        return cls(
            prefix_tokens(model), None if input_size is None else (int(input_size[0]), int(input_size[1]))
        )

    def grid(self, tokens: torch.Tensor) -> TokenGrid | None:
        """The grid of a ``(N, T, C)`` token tensor, or ``None`` when it is not one."""
        return self.grid_for(tokens.shape[1]) if tokens.ndim == 3 else None

    def grid_for(self, count: int) -> TokenGrid | None:
        """The grid of ``count`` tokens, or ``None`` when they do not form one."""
        return TokenGrid.find(count, prefix=self.prefix, input_size=self.input_size)
