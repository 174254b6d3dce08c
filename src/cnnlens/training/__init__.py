"""Transfer learning on small datasets: freeze policies, a resumable trainer and its curves."""

from cnnlens.training.config import TrainConfig
from cnnlens.training.freeze import FREEZE_POLICIES, apply_freeze, frozen_units, last_stage, set_train_mode
from cnnlens.training.trainer import CrossEntropy, Listener, Objective, Trainer, TrainingWarning

__all__ = [
    "FREEZE_POLICIES",
    "CrossEntropy",
    "Listener",
    "Objective",
    "TrainConfig",
    "Trainer",
    "TrainingWarning",
    "apply_freeze",
    "frozen_units",
    "last_stage",
    "set_train_mode",
]
