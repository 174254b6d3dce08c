"""Errors raised by cnnlens.

Every error says what was given, what was expected and how to fix it. They subclass the built-in
exception a caller would expect (``ValueError``, ``FileNotFoundError``, ``RuntimeError``) so code that
already catches those keeps working; :class:`CnnlensError` lets a caller catch all of ours at once.
"""

from __future__ import annotations


class CnnlensError(Exception):
    """Base class of every error cnnlens raises on purpose."""


class InputError(CnnlensError, ValueError):
    """What the caller gave (an argument, a setting, a tensor, a file's content) is not valid; the
    message says what was given, what was expected and how to fix it. The command line prints it as
    one line; any other exception is a bug and shows its traceback."""


class InputTypeError(CnnlensError, TypeError):
    """An argument of the wrong type (see :class:`InputError`)."""


class ImageLoadError(CnnlensError, ValueError):
    """An image file could not be read; the message names the file and the reason."""


class ModelLoadError(CnnlensError, RuntimeError):
    """A model, its weights or a checkpoint could not be loaded."""


class PrecisionError(CnnlensError, ValueError):
    """The requested numeric precision cannot run on this device; the message says what to use."""


class BackendError(CnnlensError, ValueError):
    """The requested backend cannot run on this device; the message says what to use."""


class UnknownNameError(CnnlensError, KeyError):
    """A name (layer, method, model, class) is not known; the message lists the closest names."""

    def __str__(self) -> str:  # KeyError would quote the message
        return str(self.args[0]) if self.args else ""


def closest(name: str, candidates: list[str], n: int = 5) -> list[str]:
    """Return up to ``n`` candidates closest to ``name`` (substring matches first, then difflib)."""
    import difflib

    lowered = name.lower()
    contains = [c for c in candidates if lowered and lowered in c.lower()]
    fuzzy = difflib.get_close_matches(name, candidates, n=n, cutoff=0.5)
    seen: dict[str, None] = {}
    for c in [*fuzzy, *contains]:
        seen.setdefault(c, None)
    return list(seen)[:n]


def unknown(kind: str, name: str, candidates: list[str], hint: str = "") -> UnknownNameError:
    """Build an :class:`UnknownNameError` for ``name`` that suggests the closest ``candidates``."""
    near = closest(name, candidates)
    msg = f"unknown {kind} {name!r}"
    if near:
        msg += f"; closest: {', '.join(near)}"
    elif candidates:
        shown = ", ".join(candidates[:10]) + (" ..." if len(candidates) > 10 else "")
        msg += f"; known: {shown}"
    if hint:
        msg += f". {hint}"
    return UnknownNameError(msg)


class DataWarning(UserWarning):
    """Something in a dataset looks wrong but training can go on (skipped files, class imbalance)."""
