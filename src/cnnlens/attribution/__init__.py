"""Attribution methods behind one contract (:class:`Attribution`), found through the registry."""

from cnnlens.attribution import (  # noqa: F401  (registers the methods)
    cam,
    gradient,
    guided,
    layer,
    perturbation,
    spn,
    surrogate,
)
from cnnlens.attribution.base import Attributed, Attribution, check_inputs, target_scores
from cnnlens.attribution.explanation import Explanation
from cnnlens.attribution.registry import (
    create,
    get_method,
    method_names,
    methods_markdown,
    register,
)
from cnnlens.attribution.targets import explain_targets, resolve_targets

__all__ = [
    "Attributed",
    "Attribution",
    "Explanation",
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
