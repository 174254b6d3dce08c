"""Image loading and checks, preprocessing, and the sample photos that ship in installed packages."""

from cnnlens.data.images import MAX_PIXELS, load_image
from cnnlens.data.samples import SAMPLE_NAMES, load_sample, sample_images
from cnnlens.data.transforms import Preprocessing

__all__ = [
    "MAX_PIXELS",
    "SAMPLE_NAMES",
    "Preprocessing",
    "load_image",
    "load_sample",
    "sample_images",
]
