"""Checks of user-given settings: one place, one wording ("what was given, what was expected")."""

from __future__ import annotations

import json
import numbers
import os
from pathlib import Path
from typing import Any, TypeGuard

from cnnlens.errors import InputError, InputTypeError

SCORES = ("logit", "probability")


def check_score(score: str) -> str:
    """Validate a ``score=`` argument (``"logit"`` or ``"probability"``)."""
    if score not in SCORES:
        raise InputError(f"score must be one of {', '.join(SCORES)}, got {score!r}")
    return score


def is_int(value: object) -> TypeGuard[numbers.Integral]:
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def is_real(value: object) -> TypeGuard[numbers.Real]:
    return isinstance(value, numbers.Real) and not isinstance(value, bool)


def describe(value: object) -> str:
    """``value`` and its type for an error message, with a hint for the usual mistakes."""
    text = f"{value!r} ({type(value).__name__})"
    if isinstance(value, float) and value.is_integer():
        return f"{text}; use {int(value)}"
    if isinstance(value, str):
        return f"{text}; pass a number, not a string"
    return text


def check_int(name: str, value: object) -> int:
    """Validate the type of an integer hyper-parameter and return it as an ``int``.

    Ranges are left to the caller; this rejects what is not an integer (``bool`` and integral
    floats such as ``8.0`` included) with a message naming the parameter. The CLI's
    ``-p window=8`` already arrives as the integer ``8`` (:func:`cnnlens.cli.common.parse_params`).

    Raises:
        TypeError: ``value`` is not an integer.
    """
    if not is_int(value):
        raise InputTypeError(f"{name} must be an integer, got {describe(value)}")
    return int(value)


def check_real(name: str, value: object) -> float:
    """Validate the type of a real-valued hyper-parameter and return it as a ``float``.

    Raises:
        TypeError: ``value`` is not a real number (a string, ``None``, a ``bool`` ...).
    """
    if not is_real(value):
        raise InputTypeError(f"{name} must be a number, got {describe(value)}")
    return float(value)


def check_positive_int(name: str, value: object) -> int:
    """Validate a count (``steps``, ``batch_size``, ``--top`` ...): an integer of at least 1.

    Raises:
        ValueError: ``value`` is not an integer (``bool`` and integral floats such as ``8.0``
            included) or is below 1.
    """
    return check_int_at_least(name, value, 1)


def check_int_at_least(name: str, value: object, minimum: int) -> int:
    """Validate an integer setting that has a lower bound, and return it as an ``int``.

    Raises:
        ValueError: ``value`` is not an integer (``bool`` and integral floats such as ``8.0``
            included) or is below ``minimum``; the message says what was given and expected.
    """
    if not is_int(value) or value < minimum:
        expected = "a positive integer" if minimum == 1 else f"an integer of at least {minimum}"
        raise InputError(f"{name} must be {expected}, got {value if is_int(value) else describe(value)}")
    return int(value)


def check_fraction(name: str, value: object) -> float:
    """Validate a share strictly between 0 and 1 and return it as a ``float``.

    Raises:
        ValueError: ``value`` is not a real number or not in ``(0, 1)``.
    """
    if not is_real(value) or not 0 < float(value) < 1:
        raise InputError(
            f"{name} must be a fraction in (0, 1), got {value if is_real(value) else describe(value)}"
        )
    return float(value)


def read_json(path: str | os.PathLike[str], what: str = "JSON file") -> Any:
    """The parsed contents of the JSON file ``path``.

    Raises:
        InputError: The file is not UTF-8 or not valid JSON; the one-line message names the file,
            the line and column, and what it should hold (``what``).
    """
    p = Path(path)
    try:
        return json.loads(p.read_text(encoding="utf-8"))
    except UnicodeDecodeError as err:
        raise InputError(
            f"{p}: not UTF-8 text (byte 0x{err.object[err.start]:02x} at offset {err.start}); "
            f"expected a {what}"
        ) from None
    except json.JSONDecodeError as err:
        raise InputError(
            f"{p}: not valid JSON ({err.msg} at line {err.lineno}, column {err.colno}); expected a "
            f"{what}; fix or remove the file"
        ) from None
