"""Models: the registry (torchvision, timm, the offline default), checkpoints, heads and layers."""

from cnnlens.models.checkpoint import save_checkpoint
from cnnlens.models.heads import HEADS, apply_head
from cnnlens.models.layers import LayerInfo, layer_names, resolve_layer
from cnnlens.models.loaded import LoadedModel
from cnnlens.models.registry import (
    DEFAULT_MODEL,
    ModelEntry,
    build_architecture,
    list_models,
    load_model,
)

__all__ = [
    "DEFAULT_MODEL",
    "HEADS",
    "LayerInfo",
    "LoadedModel",
    "ModelEntry",
    "apply_head",
    "build_architecture",
    "layer_names",
    "list_models",
    "load_model",
    "resolve_layer",
    "save_checkpoint",
]
