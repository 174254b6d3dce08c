"""The settings of a training run, stored as ``RUN/config.json``."""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass, fields
from typing import Any

from cnnlens import outputs
from cnnlens.data.dataset import AUGMENTATIONS
from cnnlens.data.split import DEFAULT_FRACTIONS, check_fractions
from cnnlens.errors import InputError
from cnnlens.models.heads import HEADS, WRAPPING_HEADS
from cnnlens.models.saliency_net import LOC_LOSSES
from cnnlens.validation import read_json


def auto_freeze(head: str, pretrained: bool) -> str:
    """The freeze policy ``"auto"`` stands for.

    ``linear`` and ``mlp64`` heads: ``"features"`` (transfer learning by linear probing: the
    ImageNet-trained backbone is kept and only the new head trains, as in the usual VGG
    transfer-learning recipe and in Fang's fruit-classification study, which fine-tunes only the
    last layer of a ResNet-152). The saliency-aware heads of Fan et al. (``cnet``, ``spn``): the
    reconstruction loss must reach the feature extraction network ("back propagated to optimize
    both the feature extraction network and saliency prediction network"), so a pretrained F-Net
    trains its last stage (``"last-stage"``) and a randomly initialised one trains entirely
    (``"none"``). The baseline ``cnet`` gets the same policy as ``spn`` so that the two differ
    only in the SPN.
    """
    if head in WRAPPING_HEADS:
        return "last-stage" if pretrained else "none"
    return "features"


def write_json(path: str | os.PathLike[str], obj: Any) -> None:
    """Write ``obj`` as JSON atomically, never through a symbolic link (see :mod:`cnnlens.outputs`)."""
    outputs.write_json(path, obj)


@dataclass(frozen=True)
class TrainConfig:
    """Everything that decides a run's result.

    Attributes:
        data: Class-folder dataset or CSV manifest.
        model: Model name (or checkpoint / run folder) to start from.
        head: ``"linear"``, ``"mlp64"``, ``"cnet"`` (Fan et al.'s C-Net, no SPN) or ``"spn"`` (C-Net plus
            the saliency prediction net, trained with the masks: saliency-aware training); see
            :mod:`cnnlens.models.heads`.
        freeze: ``"features"``, ``"none"``, ``"last-stage"`` or ``"until:LAYER"`` (see
            :mod:`cnnlens.training.freeze`), or ``"auto"``, resolved when the config is made (see
            :func:`auto_freeze`).
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
    freeze: str = "auto"
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
            raise InputError(f"--head must be one of {', '.join(HEADS[1:])}, got {self.head!r}")
        if not 0.0 <= self.mask_ratio <= 1.0:
            raise InputError(f"--mask-ratio must be between 0 and 1, got {self.mask_ratio}")
        if self.loc_loss not in LOC_LOSSES:
            raise InputError(f"--loc-loss must be one of {', '.join(LOC_LOSSES)}, got {self.loc_loss!r}")
        if self.loc_weight < 0:
            raise InputError(f"--lambda must be non-negative, got {self.loc_weight}")
        for name in ("epochs", "batch_size"):
            if getattr(self, name) < 1:
                raise InputError(f"--{name.replace('_', '-')} must be at least 1, got {getattr(self, name)}")
        if self.lr <= 0 or self.weight_decay < 0:
            raise InputError(
                f"--lr must be positive and weight decay non-negative, got {self.lr}, {self.weight_decay}"
            )
        if self.patience is not None and self.patience < 1:
            raise InputError(f"--patience must be at least 1, got {self.patience}")
        if self.augment not in AUGMENTATIONS:
            raise InputError(f"--augment must be one of {', '.join(AUGMENTATIONS)}, got {self.augment!r}")
        if self.image_size is not None and self.image_size < 8:
            raise InputError(f"--image-size must be at least 8 pixels, got {self.image_size}")
        check_fractions(self.split)
        if self.freeze == "auto":
            object.__setattr__(self, "freeze", auto_freeze(self.head, self.pretrained))

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
        """Write the config as JSON, atomically (a killed process never leaves half a file)."""
        write_json(path, self.to_dict())

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> TrainConfig:
        """Read a run's ``config.json``.

        Raises:
            InputError: The file is not valid JSON, or not a JSON object (one line naming the file).
        """
        body = read_json(path, "training configuration written by cnnlens train")
        if not isinstance(body, dict):
            raise InputError(f"{path}: holds a JSON {type(body).__name__}, not a training configuration")
        return cls.from_dict(body)
