"""Pure functions from maps and images to pictures."""

from cnnlens.viz.overlay import colorize, normalize_map, overlay

__all__ = ["colorize", "normalize_map", "overlay"]
