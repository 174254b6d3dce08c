"""Hypothesis experiments: does a classifier use an object's parts, their arrangement, its shape or
its texture? One image at a time (:mod:`~cnnlens.hypothesis.experiments`) or over a cue-conflict set
(:mod:`~cnnlens.hypothesis.shape_bias`, the shape-bias score of Geirhos et al., ICLR 2019).

The package sits beside ``evaluation`` and ``probing`` in the layers: it needs only the models and the
data (and the target resolution of ``attribution``), and only the command line and reports use it.
"""

from cnnlens.hypothesis.experiments import (
    ExperimentResult,
    Prediction,
    VariantResult,
    model_view,
    parts_experiment,
    probabilities,
    shape_experiment,
    shuffle_experiment,
    texture_experiment,
)
from cnnlens.hypothesis.shape_bias import ShapeBiasResult, shape_bias, wilson_interval

__all__ = [
    "ExperimentResult",
    "Prediction",
    "ShapeBiasResult",
    "VariantResult",
    "model_view",
    "parts_experiment",
    "probabilities",
    "shape_bias",
    "shape_experiment",
    "shuffle_experiment",
    "texture_experiment",
    "wilson_interval",
]
