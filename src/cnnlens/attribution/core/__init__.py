"""The contract every attribution method follows: the ``explain`` template, the registry, targets and
the :class:`~cnnlens.attribution.core.explanation.Explanation` it returns."""
