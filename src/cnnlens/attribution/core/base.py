"""The one contract every attribution method follows.

A method is a subclass of :class:`Attribution` that sets a few class attributes and implements
:meth:`Attribution._attribute`. Everything else is shared by :meth:`Attribution.explain`: input
checks, target resolution, eval mode set and restored, gradients switched off for the parameters,
device, batching, upsampling to the input resolution, timing, and the :class:`Explanation`.
"""

from __future__ import annotations

import inspect
import time
from abc import ABC, abstractmethod
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import nn

from cnnlens.attribution.core.explanation import Explanation
from cnnlens.attribution.core.targets import Target, plain_target, resolve_targets, target_count_error
from cnnlens.attribution.engine.batching import auto_batch_size
from cnnlens.attribution.engine.layout import check_memory_format
from cnnlens.attribution.engine.precision import check_precision, resolve_precision
from cnnlens.attribution.engine.runner import (
    Objective,
    PassRunner,
    check_backend,
    objective_scores,
    target_scores,
)
from cnnlens.errors import InputError, InputTypeError
from cnnlens.models.hooks import preserved_state
from cnnlens.models.layers import default_cam_layer, resolve_layer
from cnnlens.models.loaded import LoadedModel

ModelLike = nn.Module | LoadedModel
LayerSpec = str | nn.Module | None

#: The settings of the pass runner a method forwards (``**settings`` in its ``__init__``).
RUN_SETTINGS = ("precision", "memory_format", "backend")


@dataclass
class Attributed:
    """What :meth:`Attribution._attribute` may return instead of a bare tensor."""

    maps: torch.Tensor
    extras: dict[str, Any] = field(default_factory=dict)


class TargetPicker:
    """The targets of a method that chooses them from the logits of its own forward pass.

    Single-pass gradient methods (saliency, Grad-CAM, ...) need the target before their backward pass
    but no separate forward to find it: each chunk's logits come from the pass that is back-propagated,
    and :meth:`take` resolves that chunk's targets from them (``None`` means each input's top class).
    A later pass over the same inputs (Guided Grad-CAM's second rule) gets the targets already chosen.

    Args:
        target: What the caller asked for (see :func:`~cnnlens.attribution.core.targets.resolve_targets`).
        class_names: The model's class names, for targets given by name.
        count: Number of inputs.
    """

    def __init__(self, target: Target, class_names: list[str] | None, count: int):
        self.count = count
        self.class_names = class_names
        self.target = self._per_input(target, count)
        self._targets = torch.full((count,), -1, dtype=torch.long)
        self._logits: torch.Tensor | None = None

    @staticmethod
    def _per_input(target: Target, count: int) -> Target:
        target = plain_target(target)
        if isinstance(target, (list, tuple)) and len(target) != count:
            raise target_count_error(len(target), count)
        return target

    @classmethod
    def given(cls, targets: torch.Tensor) -> TargetPicker:
        """A picker whose targets are already resolved (one class index per input)."""
        picker = cls(None, None, len(targets))
        picker._targets = targets.detach().cpu().long().clone()
        return picker

    def take(self, logits: torch.Tensor, start: int) -> torch.Tensor:
        """The targets of inputs ``start .. start + len(logits)``, on the logits' device."""
        stop = start + len(logits)
        logits = logits.detach().float()
        if self._logits is None:
            self._logits = torch.full((self.count, logits.shape[1]), float("nan"))
        self._logits[start:stop] = logits.cpu()
        if bool((self._targets[start:stop] < 0).any()):
            spec = self.target[start:stop] if isinstance(self.target, (list, tuple)) else self.target
            self._targets[start:stop] = resolve_targets(spec, logits, self.class_names)
        return self._targets[start:stop].to(logits.device)

    def resolved(self) -> tuple[torch.Tensor, torch.Tensor]:
        """The ``(N,)`` targets and the ``(N, K)`` logits every input's pass produced."""
        if self._logits is None or bool((self._targets < 0).any()) or bool(self._logits.isnan().any()):
            raise RuntimeError("the method's passes did not cover every input")
        return self._targets, self._logits


def chunk_targets(targets: torch.Tensor | TargetPicker, logits: torch.Tensor, start: int) -> torch.Tensor:
    """The targets of inputs ``start .. start + len(logits)``: a slice, or picked from ``logits``."""
    if isinstance(targets, TargetPicker):
        return targets.take(logits, start)
    return targets[start : start + len(logits)].to(logits.device)


def check_inputs(inputs: torch.Tensor, channels: int | None = None) -> torch.Tensor:
    """Validate a preprocessed image batch: a float ``(N, C, H, W)`` (or one ``(C, H, W)``) tensor."""
    if not isinstance(inputs, torch.Tensor):
        raise InputTypeError(
            f"inputs must be a preprocessed image tensor, got {type(inputs).__name__}; "
            "use LoadedModel.prepare(image) to make one"
        )
    if inputs.ndim == 3:
        inputs = inputs.unsqueeze(0)
    if inputs.ndim != 4:
        raise InputError(f"inputs must have shape (N, C, H, W) or (C, H, W), got {tuple(inputs.shape)}")
    if not inputs.is_floating_point():
        raise InputTypeError(f"inputs must be a float tensor, got {inputs.dtype}")
    if inputs.shape[0] == 0:
        raise InputError("inputs is an empty batch")
    if channels is not None and inputs.shape[1] != channels:
        raise InputError(f"the model expects {channels} input channels, got {inputs.shape[1]}")
    if not torch.isfinite(inputs).all():
        raise InputError("inputs contain NaN or infinite values")
    return inputs


def check_batch_size(batch_size: object) -> None:
    """Validate a ``batch_size=`` argument: ``None``, ``"auto"`` or a positive integer."""
    if batch_size is None or batch_size == "auto":
        return
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise InputError(f"batch_size must be a positive integer or 'auto', got {batch_size!r}")


def first_conv_channels(module: nn.Module) -> int | None:
    for m in module.modules():
        if isinstance(m, nn.Conv2d):
            return m.in_channels
    return None


class Attribution(ABC):
    """Base class of every attribution method.

    Subclasses store their hyper-parameters in ``__init__`` (keyword-only, with defaults, each kept
    under the same attribute name) and implement :meth:`_attribute`.

    Class attributes:
        name: Registry name (``"gradcam"``).
        family: ``"gradient"``, ``"cam"``, ``"perturbation"``, ``"surrogate"`` or ``"layer"``.
        summary: One line for ``cnnlens methods`` and the docs.
        reference: The paper.
        needs_gradients: Whether the method back-propagates.
        uses_layer: Whether the method works on an intermediate layer (``layer=``).
        signed: Whether negative attributions are meaningful.
    """

    name: ClassVar[str]
    family: ClassVar[str]
    summary: ClassVar[str]
    reference: ClassVar[str]
    needs_gradients: ClassVar[bool] = False
    uses_layer: ClassVar[bool] = False
    signed: ClassVar[bool] = False
    default_batch_size: ClassVar[int] = 32
    #: Whether ``precision="auto"`` may choose bfloat16 for this method (its bf16 maps keep a Spearman
    #: rank correlation >= 0.99 with the fp32 maps; measured by ``bench/attribution.py --precision``).
    bf16_faithful: ClassVar[bool] = False
    #: Lighter hyper-parameters for a first look (``cnnlens demo``, ``cnnlens explain --quick``): fewer
    #: samples, steps or windows, chosen so that every method on the five sample photos fits the demo's
    #: five-minute budget on a 2-core CPU. The paper defaults stay the defaults.
    quick_params: ClassVar[dict[str, Any]] = {}
    #: Parameters in pixels of the input (window sides) that must fit in the image: the command
    #: line refuses a value given for one of them larger than the model's input.
    pixel_params: ClassVar[tuple[str, ...]] = ()
    #: Whether a target may be a function of the logits (CAM reads the target class's head weights).
    explains_functions: ClassVar[bool] = True
    #: Whether the map depends on the explained class. ``False`` for methods whose maps are (nearly)
    #: the same for every class by construction (deconvnet, guided backprop: Sixt et al. 2020); the
    #: benchmark's ``class_sensitivity`` metric measures it, docs/methods.md gives the numbers.
    class_sensitive: ClassVar[bool] = True

    def __init__(
        self,
        model: ModelLike,
        *,
        layer: LayerSpec = None,
        batch_size: int | str | None = None,
        precision: str = "auto",
        memory_format: str = "auto",
        backend: str = "auto",
    ):
        if not isinstance(model, (nn.Module, LoadedModel)):
            raise InputTypeError(f"model must be an nn.Module or a LoadedModel, got {type(model).__name__}")
        if layer is not None and not self.uses_layer:
            raise InputError(f"method {self.name!r} does not use a layer, but layer={layer!r} was given")
        check_batch_size(batch_size)
        module = model.module if isinstance(model, LoadedModel) else model
        reason = self.unsupported(module)
        if reason is not None:
            raise InputError(f"method {self.name!r} cannot explain {type(module).__name__}: {reason}")
        self.model = model
        self.layer = layer
        self.batch_size = batch_size
        self.precision = check_precision(precision)
        if precision == "bf16":  # fail here, not in the middle of a run, where bf16 cannot run at all
            resolve_precision(precision, self.device, False)
        self.memory_format = check_memory_format(memory_format)
        self.backend = check_backend(backend)
        self.runner: PassRunner | None = None  # set by explain for the duration of one call

    @classmethod
    def unsupported(cls, module: nn.Module) -> str | None:
        """Why this method cannot explain ``module`` at all, or ``None`` when it can.

        Methods that need something of the model (an SPN, a GAP + linear head) say so here, and
        ``--method all`` / ``cnnlens demo`` leave them out for models that lack it.
        """
        return None

    # -- what the model carries ------------------------------------------------------------------

    @property
    def module(self) -> nn.Module:
        return self.model.module if isinstance(self.model, LoadedModel) else self.model

    @property
    def device(self) -> torch.device:
        """The device of the model's parameters (the CPU for a model without any)."""
        param = next(self.module.parameters(), None)
        return param.device if param is not None else torch.device("cpu")

    @property
    def class_names(self) -> list[str] | None:
        return self.model.class_names if isinstance(self.model, LoadedModel) else None

    def target_layer(self, inputs: torch.Tensor) -> tuple[str, nn.Module]:
        """The layer this method works on: ``layer=`` or the model's default CAM layer."""
        if self.layer is not None:
            return resolve_layer(self.module, self.layer)
        if isinstance(self.model, LoadedModel):
            return self.model.layer(None)
        name = default_cam_layer(self.module, tuple(inputs.shape[-2:]), inputs.shape[1])  # type: ignore[arg-type]
        if name is None:
            raise InputError(f"{type(self.module).__name__} has no spatial layer; pass layer=")
        return resolve_layer(self.module, name)

    @classmethod
    def hyperparameters(cls) -> dict[str, inspect.Parameter]:
        """The keyword parameters of the method's ``__init__`` (besides the model)."""
        params: dict[str, inspect.Parameter] = {}
        for klass in reversed(cls.__mro__):
            init = klass.__dict__.get("__init__")
            if init is None or klass is object:
                continue
            for p in list(inspect.signature(init).parameters.values())[2:]:
                if p.kind is inspect.Parameter.KEYWORD_ONLY:
                    params[p.name] = p
        if not cls.uses_layer:
            params.pop("layer", None)
        init = inspect.signature(cls.__init__).parameters.values()
        if not any(p.kind is inspect.Parameter.VAR_KEYWORD for p in init):
            for key in RUN_SETTINGS:  # only methods that forward them to the runner offer them
                params.pop(key, None)
        return params

    def get_params(self) -> dict[str, Any]:
        """Current values of the hyper-parameters (layers shown by name, tensors by their shape)."""
        out: dict[str, Any] = {}
        for key in self.hyperparameters():
            value = getattr(self, key, None)
            if isinstance(value, nn.Module):
                value = type(value).__name__
            elif isinstance(value, torch.Tensor):
                value = f"tensor{tuple(value.shape)}"
            out[key] = value
        return out

    # -- the shared template -----------------------------------------------------------------------

    def explain(
        self, inputs: torch.Tensor, target: Target = None, *, batch_size: int | str | None = None
    ) -> Explanation:
        """Explain the model's output for a batch of preprocessed images.

        Args:
            inputs: ``(N, C, H, W)`` or ``(C, H, W)`` preprocessed images.
            target: ``None`` (each input's top-1 class), a class index or name, one per input, or a
                function of the logits (``(N, K)`` in, ``(N,)`` scores out) whose value is explained
                instead of a class's score (``extras["objective"]``; ``targets`` is the top class).
            batch_size: How many perturbed inputs one forward pass evaluates (perturbation methods);
                ``"auto"`` chooses it from free memory
                (:func:`~cnnlens.attribution.engine.batching.auto_batch_size`).

        Returns:
            An :class:`Explanation` whose maps have shape ``(N, H, W)``.

        Raises:
            InputError, InputTypeError: Bad inputs, target, layer or hyper-parameters.
        """
        module = self.module
        x = check_inputs(inputs, first_conv_channels(module))
        x = x.detach().to(self.device)
        check_batch_size(batch_size)
        objective: Objective | None = target if callable(target) else None
        if objective is not None and not self.explains_functions:
            raise InputError(
                f"method {self.name!r} explains a class, not a function of the logits; give a class "
                "index or name, or use a gradient or perturbation method"
            )
        spec: Target = None if objective is not None else target
        start = time.perf_counter()
        runner = self._runner(x.device, objective)
        with (
            preserved_state(module, freeze_parameters=True),
            self._running(runner),
            self._out_of_memory_as_input_error(),
        ):
            chunk = self._chunk_size(batch_size, x)
            layer_name = self.target_layer(x)[0] if self.uses_layer else None
            # a bf16 pass could flip a near tie: targets and scores then come from an fp32 forward
            if isinstance(self, OnePass) and runner.precision == "fp32":
                picker = TargetPicker(spec, self.class_names, len(x))
                result = self._attribute_picking(x, picker, chunk)
                targets, logits = picker.resolved()
            else:
                logits = runner.logits(x, chunk)
                targets = resolve_targets(spec, logits, self.class_names)
                result = self._attribute(x, targets.to(x.device), chunk)
        out = result if isinstance(result, Attributed) else Attributed(result)
        if objective is not None:  # what was explained: the function's value; targets: the top class
            out.extras["objective"] = objective_scores(objective, logits).cpu()
        params = self.get_params()
        if "precision" in params:  # what "auto" became on this device, and what ran: saved and shown
            params.update(runner.record())
        if objective is not None:
            params["target_function"] = getattr(objective, "__name__", type(objective).__name__)
        return Explanation(
            attributions=self._to_input_resolution(out.maps, x),
            targets=targets,
            scores=target_scores(logits, targets, "probability").cpu(),
            method=self.name,
            layer=layer_name,
            seconds=time.perf_counter() - start,
            params=params,
            class_names=self.class_names,
            signed=self.signed,
            extras=out.extras,
            preprocessing=self.model.preprocessing if isinstance(self.model, LoadedModel) else None,
        )

    __call__ = explain

    @contextmanager
    def _out_of_memory_as_input_error(self) -> Iterator[None]:
        """Turn a :class:`MemoryError` (host memory) into one line naming the counts to lower."""
        try:
            yield
        except MemoryError:
            counts = {
                k: v
                for k, v in self.get_params().items()
                if isinstance(v, int) and not isinstance(v, bool) and v > 1
            }
            shown = ", ".join(f"{k}={v}" for k, v in counts.items()) or "its parameters"
            raise InputError(
                f"method {self.name!r} ran out of memory; lower {shown} (-p KEY=VALUE) or the batch size"
            ) from None

    @abstractmethod
    def _attribute(
        self, inputs: torch.Tensor, targets: torch.Tensor, batch_size: int
    ) -> torch.Tensor | Attributed:
        """Compute one ``(h, w)`` map per input: ``(N, h, w)``, upsampled by :meth:`explain`.

        Called in eval mode with parameter gradients off. ``targets`` holds one class index per input
        on the inputs' device; ``batch_size`` bounds how many inputs one forward pass may take.
        """

    # -- helpers for subclasses ------------------------------------------------------------------

    def _runner(self, device: torch.device, objective: Objective | None = None) -> PassRunner:
        settings = self.get_params()
        return PassRunner(
            self.module,
            device,
            precision=settings.get("precision", "fp32"),
            memory_format=settings.get("memory_format", "auto"),
            backend=settings.get("backend", "auto"),
            bf16_faithful=self.bf16_faithful,
            objective=objective,
        )

    @contextmanager
    def _running(self, runner: PassRunner) -> Iterator[PassRunner]:
        """:attr:`runner` is ``runner`` for the block (one ``explain`` call)."""
        previous, self.runner = self.runner, runner
        try:
            yield runner
        finally:
            self.runner = previous

    @property
    def passes(self) -> PassRunner:
        """The pass runner of the ``explain`` call in progress (a fresh one outside a call)."""
        return self.runner if self.runner is not None else self._runner(self.device)

    def forward(self, inputs: torch.Tensor, batch_size: int) -> torch.Tensor:
        """Float32 model outputs for ``inputs`` in chunks of ``batch_size``, without autograd: ``(N, K)``."""
        return self.passes.logits(inputs, batch_size)

    def _chunk_size(self, batch_size: int | str | None, x: torch.Tensor) -> int:
        chunk = batch_size or self.batch_size or self.default_batch_size
        return auto_batch_size(self.module, x) if chunk == "auto" else int(chunk)

    def compute_precision(self, device: torch.device) -> str:
        """``"fp32"`` or ``"bf16"``: what this method's ``precision`` becomes on ``device``."""
        return resolve_precision(self.get_params().get("precision", "fp32"), device, self.bf16_faithful)

    def _to_input_resolution(self, maps: torch.Tensor, inputs: torch.Tensor) -> torch.Tensor:
        maps = maps.detach().float()
        if maps.ndim != 3 or maps.shape[0] != inputs.shape[0]:
            raise RuntimeError(
                f"method {self.name!r} returned maps of shape {tuple(maps.shape)}, expected (N, h, w)"
            )
        size = tuple(inputs.shape[-2:])
        if tuple(maps.shape[-2:]) != size:
            maps = F.interpolate(maps[:, None], size=size, mode="bilinear", align_corners=False)[:, 0]
        return maps.cpu().contiguous()

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in self.get_params().items())
        return f"{type(self).__name__}({args})"


class OnePass(Attribution):
    """A method whose attribution comes from one pass per input, which also gives the logits.

    It implements :meth:`_attribute_picking`, whose helpers take each chunk's targets from
    :meth:`TargetPicker.take` on the logits of the very pass they back-propagate; ``explain`` then
    needs no forward of its own (in fp32; a bf16 pass gets its targets and scores from an fp32
    forward of the template's). ``_attribute`` (given targets) runs the same code.
    """

    @abstractmethod
    def _attribute_picking(
        self, inputs: torch.Tensor, picker: TargetPicker, batch_size: int
    ) -> torch.Tensor | Attributed:
        """Like :meth:`Attribution._attribute`, with the targets taken from each chunk's logits."""

    def _attribute(
        self, inputs: torch.Tensor, targets: torch.Tensor, batch_size: int
    ) -> torch.Tensor | Attributed:
        return self._attribute_picking(inputs, TargetPicker.given(targets), batch_size)
