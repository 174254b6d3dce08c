"""The attribution methods, one module per family; importing this package registers them all."""

from cnnlens.attribution.methods.cam import CAM, GradCAM, GradCAMPlusPlus, LayerCAM
from cnnlens.attribution.methods.deeplift import DeepLift, DeepLiftShap
from cnnlens.attribution.methods.gradient import GradientXInput, IntegratedGradients, Saliency, SmoothGrad
from cnnlens.attribution.methods.guided import Deconvnet, GuidedBackprop, GuidedGradCAM
from cnnlens.attribution.methods.layer import LayerGradientShap, LayerGradXAct, LayerIntegratedGradients
from cnnlens.attribution.methods.lrp import LRP
from cnnlens.attribution.methods.perturbation import RISE, DoubleOcclusion, Occlusion
from cnnlens.attribution.methods.scorecam import AblationCAM, ScoreCAM
from cnnlens.attribution.methods.spn import SPNMap
from cnnlens.attribution.methods.surrogate import LIME, KernelSHAP

__all__ = [
    "CAM",
    "LIME",
    "LRP",
    "RISE",
    "AblationCAM",
    "Deconvnet",
    "DeepLift",
    "DeepLiftShap",
    "DoubleOcclusion",
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
]
