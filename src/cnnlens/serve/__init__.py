"""The local web explorer (``cnnlens serve``): pick or upload an image, see the top-5, run methods in
a background queue and compare their maps. :class:`Explorer` holds the state and does the work;
:func:`create_app` puts a FastAPI app and one page (no build step) over it."""

from cnnlens.serve.app import create_app
from cnnlens.serve.explorer import Cancelled, Explorer, Limits

__all__ = ["Cancelled", "Explorer", "Limits", "create_app"]
