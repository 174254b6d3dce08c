"""The registry of attribution methods: the single source of the CLI choices, the docs table and the
contract tests."""

from __future__ import annotations

from typing import Any, TypeVar

from cnnlens.attribution.core.base import Attribution, ModelLike
from cnnlens.errors import InputError, InputTypeError, unknown

_METHODS: dict[str, type[Attribution]] = {}

A = TypeVar("A", bound=type[Attribution])


def register(cls: A) -> A:
    """Class decorator adding a method to the registry under ``cls.name``.

    Raises:
        ValueError: The name is already registered (nothing is silently overwritten).
    """
    for attr in ("name", "family", "summary", "reference"):
        if not getattr(cls, attr, None):
            raise InputTypeError(f"{cls.__name__} must set the class attribute {attr!r} to be registered")
    if cls.name in _METHODS and _METHODS[cls.name] is not cls:
        raise InputError(f"method name {cls.name!r} is already registered by {_METHODS[cls.name].__name__}")
    _METHODS[cls.name] = cls
    return cls


def method_names() -> list[str]:
    """Every registered method name, in registration order."""
    return list(_METHODS)


def get_method(name: str) -> type[Attribution]:
    """The class registered as ``name``; an unknown name lists the closest ones."""
    try:
        return _METHODS[name]
    except KeyError:
        raise unknown("method", name, method_names(), "See `cnnlens methods`") from None


def create(name: str, model: ModelLike, **params: Any) -> Attribution:
    """Instantiate the method ``name`` on ``model`` with hyper-parameters ``params``."""
    cls = get_method(name)
    allowed = cls.hyperparameters()
    bad = [k for k in params if k not in allowed]
    if "layer" in bad and params["layer"] is not None:
        raise InputError(f"method {name!r} does not use a layer, but layer={params['layer']!r} was given")
    bad = [k for k in bad if k != "layer"]
    if bad:
        raise InputTypeError(
            f"method {name!r} has no parameter {', '.join(map(repr, bad))}; "
            f"its parameters are: {', '.join(allowed) or 'none'}"
        )
    if "layer" not in allowed:
        params.pop("layer", None)
    return cls(model, **params)


def class_column(cls: type[Attribution]) -> str:
    """``cnnlens methods``' "class" column: whether the map depends on the explained class."""
    return "yes" if cls.class_sensitive else "no: same map for every class"


def methods_markdown() -> str:
    """The methods table of the docs, generated from the registry."""
    lines = [
        "| method | family | layer | gradients | class | what it shows | parameters | `--quick` "
        "| reference |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for name, cls in _METHODS.items():
        params = ", ".join(
            f"`{k}={v.default!r}`" for k, v in cls.hyperparameters().items() if k != "batch_size"
        )
        quick = ", ".join(f"`{k}={v!r}`" for k, v in cls.quick_params.items())
        lines.append(
            f"| `{name}` | {cls.family} | {'yes' if cls.uses_layer else 'no'} | "
            f"{'yes' if cls.needs_gradients else 'no'} | {class_column(cls)} | {cls.summary} | {params} | "
            f"{quick} | "
            f"{cls.reference} |"
        )
    return "\n".join(lines) + "\n"
