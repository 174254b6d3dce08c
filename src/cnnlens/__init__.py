"""cnnlens: explain, probe and evaluate CNN image classifiers.

Quick start::

    import cnnlens
    model = cnnlens.load_model()                       # offline ImageNet EfficientNet-Lite0
    image = cnnlens.load_image("cat.jpg")
    explanation = cnnlens.explain(model, image, method="gradcam")
    explanation.render(image).save("gradcam.png")      # drawn on the part of the photo the model saw

The methods are classes too: with ``x = model.prepare(image)``,
``cnnlens.GradCAM(model, layer="blocks.6")(x, target="tabby")`` is
``cnnlens.create("gradcam", model, layer="blocks.6").explain(x, target="tabby")``.
"""

from __future__ import annotations

from typing import Any

from PIL import Image

from cnnlens.attribution import Attribution, Explanation, create, get_method, method_names, methods
from cnnlens.attribution.core.targets import Target
from cnnlens.attribution.methods import *  # noqa: F403  (every method class; importing registers them)
from cnnlens.data import load_image, load_sample
from cnnlens.models import LoadedModel, list_models, load_model
from cnnlens.runtime import tune_allocator

__version__ = "0.1.0"


def explain(
    model: LoadedModel,
    image: Image.Image,
    method: str = "gradcam",
    target: Target = None,
    **params: Any,
) -> Explanation:
    """Explain ``model``'s decision on one image with one method (a convenience over the classes).

    Args:
        model: A model from :func:`load_model`.
        image: An RGB image (e.g. from :func:`load_image`).
        method: A registered method name (see :func:`method_names`).
        target: ``None`` for the top-1 class, or a class index or name.
        **params: The method's hyper-parameters.
    """
    return create(method, model, **params).explain(model.prepare(image), target)


__all__ = [
    "Attribution",
    "Explanation",
    "LoadedModel",
    "__version__",
    "create",
    "explain",
    "get_method",
    "list_models",
    "load_image",
    "load_model",
    "load_sample",
    "method_names",
    "tune_allocator",
    *methods.__all__,
]
