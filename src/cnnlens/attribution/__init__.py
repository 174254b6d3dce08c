"""Attribution methods behind one contract (:class:`Attribution`), found through the registry.

Three layers, each importing only the ones below it:

* :mod:`cnnlens.attribution.methods`: one module per family of methods (gradient, cam, guided,
  perturbation, scorecam, surrogate, layer, spn); each method is one class with its ``_attribute``.
* :mod:`cnnlens.attribution.core`: the contract (:class:`Attribution` and its ``explain`` template),
  the registry, targets and the :class:`Explanation`.
* :mod:`cnnlens.attribution.engine`: how the network runs (the pass runner, precision, backends,
  memory format, batch size, splitting a network at a layer).
"""

from cnnlens.attribution.core.base import Attributed, Attribution, check_inputs, target_scores
from cnnlens.attribution.core.explanation import Explanation
from cnnlens.attribution.core.registry import create, get_method, method_names, methods_markdown, register
from cnnlens.attribution.core.targets import explain_targets, resolve_targets
from cnnlens.attribution.methods import (  # importing them registers them
    CAM,
    LIME,
    RISE,
    AblationCAM,
    Deconvnet,
    DoubleOcclusion,
    GradCAM,
    GradCAMPlusPlus,
    GradientXInput,
    GuidedBackprop,
    GuidedGradCAM,
    IntegratedGradients,
    KernelSHAP,
    LayerCAM,
    LayerGradientShap,
    LayerGradXAct,
    LayerIntegratedGradients,
    Occlusion,
    Saliency,
    ScoreCAM,
    SmoothGrad,
    SPNMap,
)

__all__ = [
    "CAM",
    "LIME",
    "RISE",
    "AblationCAM",
    "Attributed",
    "Attribution",
    "Deconvnet",
    "DoubleOcclusion",
    "Explanation",
    "GradCAM",
    "GradCAMPlusPlus",
    "GradientXInput",
    "GuidedBackprop",
    "GuidedGradCAM",
    "IntegratedGradients",
    "KernelSHAP",
    "LayerCAM",
    "LayerGradXAct",
    "LayerGradientShap",
    "LayerIntegratedGradients",
    "Occlusion",
    "SPNMap",
    "Saliency",
    "ScoreCAM",
    "SmoothGrad",
    "check_inputs",
    "create",
    "explain_targets",
    "get_method",
    "method_names",
    "methods_markdown",
    "register",
    "resolve_targets",
    "target_scores",
]
