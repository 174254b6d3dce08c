"""The 1000 ImageNet class names, taken from torchvision (offline)."""

from __future__ import annotations

from functools import lru_cache


@lru_cache(maxsize=1)
def imagenet_classes() -> tuple[str, ...]:
    """The ImageNet-1k class names in index order, as torchvision ships them."""
    from torchvision.models import ResNet50_Weights

    names = ResNet50_Weights.IMAGENET1K_V1.meta["categories"]
    if len(names) != 1000:  # pragma: no cover - a torchvision change
        raise RuntimeError(f"torchvision shipped {len(names)} ImageNet class names, expected 1000")
    return tuple(str(n) for n in names)
