"""Attribution methods behind one contract (:class:`Attribution`), found through the registry.

Three layers, each importing only the ones below it:

* :mod:`cnnlens.attribution.methods`: one module per family of methods (gradient, cam, guided,
  perturbation, scorecam, surrogate, layer, spn); each method is one class with its ``_attribute``.
* :mod:`cnnlens.attribution.core`: the contract (:class:`Attribution` and its ``explain`` template),
  the registry, targets and the :class:`Explanation`.
* :mod:`cnnlens.attribution.engine`: how the network runs (the pass runner, precision, backends,
  memory format, batch size, splitting a network at a layer).
"""

from cnnlens.attribution import methods
from cnnlens.attribution.core.base import Attributed, Attribution, check_inputs, target_scores
from cnnlens.attribution.core.explanation import Explanation
from cnnlens.attribution.core.registry import create, get_method, method_names, methods_markdown, register
from cnnlens.attribution.core.targets import explain_targets, resolve_targets
from cnnlens.attribution.methods import *  # noqa: F403  (every method class; importing registers them)

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
    *methods.__all__,
]
