"""The settings of a training run, stored as ``RUN/config.json``."""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any

from cnnlens.data.dataset import AUGMENTATIONS
from cnnlens.data.split import DEFAULT_FRACTIONS, check_fractions
from cnnlens.models.heads import HEADS
from cnnlens.models.saliency_net import LOC_LOSSES


@dataclass(frozen=True)
class TrainConfig:
    """Everything that decides a run's result.

    Attributes:
        data: Class-folder dataset or CSV manifest.
        model: Model name (or checkpoint / run folder) to start from.
        head: ``"linear"``, ``"mlp64"``, ``"cnet"`` (seed 004's C-Net, no SPN) or ``"spn"`` (C-Net plus
            the saliency prediction net, trained with the masks: saliency-aware training); see
            :mod:`cnnlens.models.heads`.
        freeze: ``"features"``, ``"none"`` or ``"until:LAYER"`` (see :mod:`cnnlens.training.freeze`).
        epochs: Maximum number of epochs.
        lr: AdamW learning rate (cosine-annealed to 0 over ``epochs``).
        batch_size: Images per step.
        seed: Seeds the initialisation, the split, the shuffling, augmentation and dropout.
        patience: Stop after this many epochs without a better validation result (``None``: never).
        class_weights: Weight the loss by inverse class frequency (scikit-learn's "balanced").
        strict: Stop on the first unreadable file instead of skipping it.
        masks: Folder of masks matched by file name.
        augment: ``"standard"``, ``"noflip"`` or ``"none"``.
        image_size: Train at this input size instead of the model's (its resize ratio is kept).
        pretrained: Start from the model's pretrained weights.
        weights: A local weights file for the named architecture.
        weight_decay: AdamW weight decay.
        split: Train, validation and test fractions.
        device: Torch device.
        mask_ratio: ``spn`` head: the fraction of the training images that keep their mask (drawn
            with ``seed``); the others train on the classification loss alone.
        loc_loss: ``spn`` head: ``"ce"``, ``"l1"`` or ``"l2"`` between the SPN map and the mask.
        loc_weight: ``spn`` head: lambda in ``L = L_cls + lambda * L_loc``.
    """

    data: str
    model: str = "efficientnet_lite0"
    head: str = "linear"
    freeze: str = "features"
    epochs: int = 10
    lr: float = 1e-3
    batch_size: int = 32
    seed: int = 0
    patience: int | None = None
    class_weights: bool = False
    strict: bool = False
    masks: str | None = None
    augment: str = "standard"
    image_size: int | None = None
    pretrained: bool = True
    weights: str | None = None
    weight_decay: float = 1e-4
    split: tuple[float, float, float] = DEFAULT_FRACTIONS
    device: str | None = None
    mask_ratio: float = 1.0
    loc_loss: str = "ce"
    loc_weight: float = 1.0

    def __post_init__(self) -> None:
        if self.head not in HEADS or self.head == "original":
            raise ValueError(f"--head must be one of {', '.join(HEADS[1:])}, got {self.head!r}")
        if not 0.0 <= self.mask_ratio <= 1.0:
            raise ValueError(f"--mask-ratio must be between 0 and 1, got {self.mask_ratio}")
        if self.loc_loss not in LOC_LOSSES:
            raise ValueError(f"--loc-loss must be one of {', '.join(LOC_LOSSES)}, got {self.loc_loss!r}")
        if self.loc_weight < 0:
            raise ValueError(f"--lambda must be non-negative, got {self.loc_weight}")
        for name in ("epochs", "batch_size"):
            if getattr(self, name) < 1:
                raise ValueError(f"--{name.replace('_', '-')} must be at least 1, got {getattr(self, name)}")
        if self.lr <= 0 or self.weight_decay < 0:
            raise ValueError(
                f"--lr must be positive and weight decay non-negative, got {self.lr}, {self.weight_decay}"
            )
        if self.patience is not None and self.patience < 1:
            raise ValueError(f"--patience must be at least 1, got {self.patience}")
        if self.augment not in AUGMENTATIONS:
            raise ValueError(f"--augment must be one of {', '.join(AUGMENTATIONS)}, got {self.augment!r}")
        if self.image_size is not None and self.image_size < 8:
            raise ValueError(f"--image-size must be at least 8 pixels, got {self.image_size}")
        check_fractions(self.split)

    @property
    def saliency_aware(self) -> bool:
        """Whether the run trains the SPN on masks (``head="spn"``)."""
        return self.head == "spn"

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["split"] = list(self.split)
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> TrainConfig:
        known = {f.name for f in fields(cls)}
        values = {k: v for k, v in d.items() if k in known}
        if "split" in values:
            values["split"] = tuple(values["split"])
        return cls(**values)

    def save(self, path: str | os.PathLike[str]) -> None:
        Path(path).write_text(json.dumps(self.to_dict(), indent=1))

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> TrainConfig:
        return cls.from_dict(json.loads(Path(path).read_text()))
