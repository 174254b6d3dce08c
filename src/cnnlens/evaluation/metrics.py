"""The contract every explanation metric follows, and the metric registry.

A metric is a subclass of :class:`Metric` that declares, as class data, its ``category`` and whether a
higher value is better (like Quantus), stores its keyword-only parameters in ``__init__`` and implements
:meth:`Metric._evaluate` for one :class:`Sample` (one image, its map and what produced it). The
registry is the single source of the CLI choices and the docs table.
"""

from __future__ import annotations

import inspect
import math
from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar, TypeVar

import numpy as np
import torch
from torch import nn

from cnnlens.data.transforms import Preprocessing
from cnnlens.errors import InputError, InputTypeError, unknown

if TYPE_CHECKING:
    from cnnlens.evaluation.passes import ScoreQueue

#: Recomputes the map of one input for a (possibly changed) model: ``(module, x (1,C,H,W), target)``.
ExplainFn = Callable[[nn.Module, torch.Tensor, int], torch.Tensor]
#: The map of an input for a model and the explained target, ``(H, W)`` (:class:`ReexplainingMetric`).
Reexplain = Callable[[nn.Module, torch.Tensor], torch.Tensor]

CATEGORIES = ("faithfulness", "localisation", "sanity", "robustness", "complexity")


@dataclass
class Sample:
    """One image to evaluate an explanation on.

    Attributes:
        attribution: ``(H, W)`` map at the input resolution.
        inputs: ``(1, C, H, W)`` or ``(C, H, W)`` preprocessed image (needed by model-based metrics).
        model: The classifier (needed by faithfulness, sanity and robustness metrics).
        target: The explained class index.
        mask: ``(H, W)`` boolean object mask (localisation metrics).
        explain: Recomputes the map for a changed model or input (sanity and robustness metrics).
        preprocessing: How the inputs were normalised (gives the ``black`` baseline); ``None``: black
            is 0 in input units.
    """

    attribution: torch.Tensor | np.ndarray
    inputs: torch.Tensor | None = None
    model: nn.Module | None = None
    target: int = 0
    mask: torch.Tensor | np.ndarray | None = None
    explain: ExplainFn | None = None
    preprocessing: Preprocessing | None = None


@dataclass(frozen=True)
class Column:
    """A further value a metric reports besides its main one, shown as its own benchmark column.

    It is computed in the same pass as the main value (so selecting the metric gives both) and read
    from :attr:`MetricResult.extras`.

    Attributes:
        name: The column's name (``"randomisation_ssim"``); it may not be a metric's name.
        higher_is_better: Its direction.
        summary: One line for the docs and the report.
        extra: The key of :attr:`MetricResult.extras` that holds the value.
        curve: The key of the extras that holds one value per point of the main curve, plotted against
            the main curve's x (``None``: no curve).
    """

    name: str
    higher_is_better: bool
    summary: str
    extra: str
    curve: str | None = None


@dataclass
class MetricResult:
    """A metric's value for one sample, with an optional curve (x, y) and extras."""

    value: float
    curve: tuple[list[float], list[float]] | None = None
    extras: dict[str, Any] = field(default_factory=dict)


class Metric(ABC):
    """Base class of every explanation metric.

    Class attributes:
        name: Registry name (``"deletion"``).
        category: One of :data:`CATEGORIES`.
        higher_is_better: The metric's direction.
        summary: One line for the docs and the report.
        reference: The paper.
        needs: Which :class:`Sample` fields must be set besides ``attribution``.
        columns: Further values reported with the main one (see :class:`Column`).
    """

    name: ClassVar[str]
    category: ClassVar[str]
    higher_is_better: ClassVar[bool]
    summary: ClassVar[str]
    reference: ClassVar[str]
    needs: ClassVar[tuple[str, ...]] = ()
    columns: ClassVar[tuple[Column, ...]] = ()

    @classmethod
    def parameters(cls) -> dict[str, inspect.Parameter]:
        """The keyword parameters of ``__init__``."""
        sig = inspect.signature(cls.__init__)
        return {k: p for k, p in sig.parameters.items() if p.kind is inspect.Parameter.KEYWORD_ONLY}

    def get_params(self) -> dict[str, Any]:
        return {k: getattr(self, k) for k in self.parameters()}

    def __call__(self, sample: Sample) -> MetricResult:
        """Evaluate one sample after checking that it carries what this metric needs.

        Raises:
            ValueError, TypeError: A missing field, a shape mismatch, an empty mask or a non-finite map.
        """
        self.check_needs(sample)
        return self._evaluate(sample)

    def check_needs(self, sample: Sample) -> None:
        """Raise an InputError naming the first field of :attr:`needs` that ``sample`` lacks."""
        for need in self.needs:
            if getattr(sample, need) is None:
                raise InputError(f"metric {self.name!r} needs Sample.{need}, which is None")

    def queue(self, sample: Sample, queue: ScoreQueue) -> Callable[[], MetricResult] | None:
        """Queue this sample's forward passes on ``queue`` and return what computes the result once
        it has run; ``None`` (the default): the metric has no queued form, call it instead.

        Metrics whose passes are perturbed images of the sample (deletion, insertion, top-k drop)
        override it, so the benchmark runs many samples' and metrics' passes in large batches.
        """
        return None

    @abstractmethod
    def _evaluate(self, sample: Sample) -> MetricResult:
        """The per-metric computation."""

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in self.get_params().items())
        return f"{type(self).__name__}({args})"


class ReexplainingMetric(Metric):
    """A metric that explains the image again for a changed model or input (:attr:`Sample.explain`)
    and compares the new maps with the original one (sanity and robustness metrics)."""

    needs = ("inputs", "model", "explain")

    def _evaluate(self, sample: Sample) -> MetricResult:
        a = as_map(sample.attribution)
        x = as_input(sample.inputs, tuple(a.shape))
        explain = required(sample.explain, "explain")

        def again(model: nn.Module, inputs: torch.Tensor) -> torch.Tensor:
            b = as_map(explain(model, inputs, sample.target))
            if b.shape != a.shape:
                raise InputError(f"explain returned shape {tuple(b.shape)}, expected {tuple(a.shape)}")
            return b

        return self._compare(a, x, required(sample.model, "model"), again)

    @abstractmethod
    def _compare(
        self, a: torch.Tensor, x: torch.Tensor, model: nn.Module, explain: Reexplain
    ) -> MetricResult:
        """The metric of the ``(H, W)`` map ``a`` of ``x`` ``(1, C, H, W)`` and the maps ``explain`` gives."""


# -- checks shared by the metrics ------------------------------------------------------------------


def as_map(attribution: torch.Tensor | np.ndarray) -> torch.Tensor:
    """A finite ``(H, W)`` float map (a leading batch axis of one is dropped)."""
    a = torch.as_tensor(np.asarray(attribution) if isinstance(attribution, np.ndarray) else attribution)
    a = a.detach().cpu().float()
    if a.ndim == 3 and a.shape[0] == 1:
        a = a[0]
    if a.ndim != 2:
        raise InputError(f"attribution must be one (H, W) map, got shape {tuple(a.shape)}")
    if a.numel() == 0:
        raise InputError("attribution is empty")
    if not torch.isfinite(a).all():
        raise InputError("attribution contains NaN or infinite values")
    return a


def as_mask(mask: torch.Tensor | np.ndarray | None, shape: tuple[int, ...]) -> torch.Tensor:
    """A non-empty boolean mask of ``shape``."""
    if mask is None:
        raise InputError("this metric needs an object mask, got None")
    m = torch.as_tensor(np.asarray(mask) if isinstance(mask, np.ndarray) else mask).detach().cpu()
    if m.ndim == 3 and m.shape[0] == 1:
        m = m[0]
    if tuple(m.shape) != tuple(shape):
        raise InputError(
            f"mask shape {tuple(m.shape)} does not match the attribution shape {tuple(shape)}; "
            "map the mask into the model input view first (cnnlens.data.masks.mask_to_input)"
        )
    m = m.bool() if m.dtype == torch.bool else m != 0
    if not m.any():
        raise InputError("the mask is empty (no pixel is inside the object)")
    return m


def as_input(inputs: torch.Tensor | None, shape: tuple[int, ...]) -> torch.Tensor:
    """A ``(1, C, H, W)`` input whose spatial size matches the map."""
    if not isinstance(inputs, torch.Tensor):
        raise InputTypeError(f"inputs must be a tensor, got {type(inputs).__name__}")
    x = inputs[None] if inputs.ndim == 3 else inputs
    if x.ndim != 4 or x.shape[0] != 1:
        raise InputError(f"inputs must be one (1, C, H, W) image, got shape {tuple(inputs.shape)}")
    if tuple(x.shape[-2:]) != tuple(shape):
        raise InputError(
            f"inputs are {tuple(x.shape[-2:])} pixels but the attribution is {tuple(shape)}; "
            "they must have the same spatial size"
        )
    return x.detach()


T = TypeVar("T")


def required(value: T | None, what: str) -> T:
    """``value``, or a ValueError naming the missing :class:`Sample` field."""
    if value is None:
        raise InputError(f"this metric needs Sample.{what}, which is None")
    return value


def nan_result(reason: str) -> MetricResult:
    """The result of a metric that is undefined for this map (e.g. no positive attribution)."""
    return MetricResult(math.nan, extras={"undefined": reason})


# -- the registry ----------------------------------------------------------------------------------

_METRICS: dict[str, type[Metric]] = {}

M = TypeVar("M", bound=type[Metric])


def register_metric(cls: M) -> M:
    """Class decorator adding a metric to the registry under ``cls.name``.

    Raises:
        TypeError: A declaration is missing or the category is unknown.
        ValueError: The name, or the name of one of its columns, is already taken.
    """
    for attr in ("name", "category", "higher_is_better", "summary", "reference"):
        if getattr(cls, attr, None) is None:
            raise InputTypeError(f"{cls.__name__} must set the class attribute {attr!r} to be registered")
    if cls.category not in CATEGORIES:
        raise InputTypeError(f"{cls.__name__}.category must be one of {CATEGORIES}, got {cls.category!r}")
    if cls.name in _METRICS and _METRICS[cls.name] is not cls:
        raise InputError(f"metric name {cls.name!r} is already registered by {_METRICS[cls.name].__name__}")
    columns = {c.name for other in _METRICS.values() if other is not cls for c in other.columns}
    if cls.name in columns:
        raise InputError(f"metric name {cls.name!r} is already the name of another metric's column")
    taken = {*_METRICS, cls.name, *columns}
    for column in cls.columns:
        if column.name in taken:
            raise InputError(
                f"column name {column.name!r} of {cls.__name__} is already a metric or column name"
            )
    _METRICS[cls.name] = cls
    return cls


def metric_names() -> list[str]:
    """Every registered metric name, in registration order."""
    return list(_METRICS)


def column_names() -> list[str]:
    """Every column a registered metric reports besides its main value (see :class:`Column`)."""
    return [c.name for cls in _METRICS.values() for c in cls.columns]


def metric_of(name: str) -> str:
    """The metric that reports ``name``: ``name`` itself for a metric, the owner for a column."""
    for cls in _METRICS.values():
        if any(c.name == name for c in cls.columns):
            return cls.name
    return name


def get_metric(name: str) -> type[Metric]:
    """The class registered as ``name``; an unknown name lists the closest ones."""
    try:
        return _METRICS[name]
    except KeyError:
        raise unknown("metric", name, metric_names()) from None


def create_metric(name: str, **params: Any) -> Metric:
    """Instantiate the metric ``name`` with ``params`` (unknown parameters are an error)."""
    cls = get_metric(name)
    bad = [k for k in params if k not in cls.parameters()]
    if bad:
        raise InputTypeError(
            f"metric {name!r} has no parameter {', '.join(map(repr, bad))}; "
            f"its parameters are: {', '.join(cls.parameters()) or 'none'}"
        )
    return cls(**params)


def metrics_markdown() -> str:
    """The metrics table of the docs, generated from the registry."""
    lines = [
        "| metric | category | better | what it measures | parameters | reference |",
        "|---|---|---|---|---|---|",
    ]
    for name, cls in _METRICS.items():
        params = ", ".join(f"`{k}={p.default!r}`" for k, p in cls.parameters().items())
        better = "higher" if cls.higher_is_better else "lower"
        lines.append(f"| `{name}` | {cls.category} | {better} | {cls.summary} | {params} | {cls.reference} |")
        for c in cls.columns:
            better = "higher" if c.higher_is_better else "lower"
            what = f"{c.summary} (reported with `{name}`)"
            lines.append(
                f"| `{c.name}` | {cls.category} | {better} | {what} | as `{name}` | {cls.reference} |"
            )
    return "\n".join(lines) + "\n"
