"""Turning what the user says about the target class into class indices."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING

import numpy as np
import torch

from cnnlens.errors import InputError, InputTypeError, unknown

if TYPE_CHECKING:  # the methods import this module
    from cnnlens.attribution.core.base import Attribution
    from cnnlens.attribution.core.explanation import Explanation

#: What a caller may pass as ``target``: None (top-1), an index, a class name, or one per image.
#: What to explain: ``None`` (each input's top class), a class index or name, one per input, or a
#: function of the logits (``(N, K)`` in, ``(N,)`` scores out, e.g. the difference of two logits).
Target = (
    None
    | int
    | str
    | Sequence[int | str]
    | torch.Tensor
    | np.ndarray
    | Callable[[torch.Tensor], torch.Tensor]
)


def class_index(value: int | str, class_names: Sequence[str] | None, num_classes: int) -> int:
    """Resolve one class given by index or name (case-insensitive) to an index.

    Raises:
        ValueError: The index is out of range.
        UnknownNameError: The name is not a class of the model (the closest names are listed).
    """
    if isinstance(value, (bool, np.bool_)):
        raise InputTypeError(f"target must be a class index or name, not a bool ({value!r})")
    if isinstance(value, (int, np.integer)):
        idx = int(value)
    elif isinstance(value, str):
        text = value.strip()
        if text.lstrip("-").isdigit():
            idx = int(text)
        else:
            names = list(class_names or [])
            if not names:
                raise InputError(
                    f"target {value!r} is a class name, but the model has no class names; "
                    "give a class index instead"
                )
            lowered = [n.lower() for n in names]
            if text.lower() not in lowered:
                raise unknown("class", text, names, "Give an index or one of the model's classes")
            return lowered.index(text.lower())
    else:
        raise InputTypeError(f"target must be a class index or name, got {type(value).__name__}")
    if not 0 <= idx < num_classes:
        raise InputError(
            f"target class {idx} is out of range for a model with {num_classes} classes "
            f"(0..{num_classes - 1})"
        )
    return idx


def target_count_error(targets: int, inputs: int) -> ValueError:
    """The error for a list of targets whose length is not the number of inputs, with the way to
    explain the same inputs for several classes."""
    return ValueError(
        f"got {targets} targets for {inputs} inputs; give one target for all inputs or one per "
        "input. To explain the same inputs for several classes, use "
        "cnnlens.attribution.core.targets.explain_targets(method, inputs, targets), which returns one "
        "Explanation per target"
    )


def plain_target(target: Target) -> Target:
    """A tensor or array target as a plain index (0-d) or list of indices; anything else unchanged."""
    if isinstance(target, (torch.Tensor, np.ndarray)):
        arr = np.asarray(target.detach().cpu() if isinstance(target, torch.Tensor) else target)
        return int(arr) if arr.ndim == 0 else [int(v) for v in arr.reshape(-1)]
    return target


def resolve_targets(
    target: Target, logits: torch.Tensor, class_names: Sequence[str] | None = None
) -> torch.Tensor:
    """Return one class index per input as a ``(N,)`` long tensor.

    Args:
        target: ``None`` for each input's top-1 class; an index or a class name for all inputs;
            or a sequence (or 1-D tensor) with one index or name per input. A list is always one
            target per input, never several targets for one input (see :func:`explain_targets`).
        logits: The model output, ``(N, num_classes)``.
        class_names: Names of the classes, needed only when targets are given by name.

    Raises:
        ValueError: A sequence whose length is not ``N``, or a class index out of range.
        TypeError: A target that is neither an index, a name nor a sequence of them.
        UnknownNameError: A class name the model does not have.
    """
    n, num_classes = logits.shape
    if target is None:
        return logits.argmax(dim=1).cpu()
    target = plain_target(target)
    if isinstance(target, (int, str, np.integer)):
        idx = class_index(target, class_names, num_classes)
        return torch.full((n,), idx, dtype=torch.long)
    if not isinstance(target, Sequence):
        raise InputTypeError(
            f"target must be a class index or name, or one per input; got {type(target).__name__}"
        )
    items = list(target)
    if len(items) != n:
        raise target_count_error(len(items), n)
    return torch.tensor([class_index(v, class_names, num_classes) for v in items], dtype=torch.long)


def explain_targets(
    method: Attribution,
    inputs: torch.Tensor,
    targets: Sequence[int | str] | int | str,
    *,
    batch_size: int | str | None = None,
) -> list[Explanation]:
    """Explain the same inputs for several target classes: one :class:`Explanation` per target.

    ``method.explain(x, target=[a, b])`` reads the list as one target per input, so for a single
    image it is an error; this is the way to ask "why a, and why b?" of the same image(s).

    Args:
        method: An attribution method built on the model.
        inputs: ``(N, C, H, W)`` or ``(C, H, W)`` preprocessed images.
        targets: Class indices or names; each is explained for every input.
        batch_size: Passed to :meth:`~cnnlens.attribution.core.base.Attribution.explain`.

    Returns:
        ``explanations[k]`` explains every input for ``targets[k]`` (``N`` maps each).

    Raises:
        ValueError: ``targets`` is empty, or a class index is out of range.
        UnknownNameError: A class name the model does not have.

    Example:
        >>> tabby, tiger = explain_targets(gradcam, x, ["tabby", "tiger cat"])  # doctest: +SKIP
    """
    wanted = [targets] if isinstance(targets, (int, str, np.integer)) else list(targets)
    if not wanted:
        raise InputError("explain_targets needs at least one target class (an index or a name)")
    names = method.class_names
    if names:  # a misspelt name fails before any work is done
        wanted = [class_index(t, names, len(names)) for t in wanted]
    return [method.explain(inputs, target, batch_size=batch_size) for target in wanted]
