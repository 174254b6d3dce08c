"""Pure functions from maps and images to pictures."""

from cnnlens.viz.overlay import ColorScale, choose_scale, colorize, normalize_map, overlay

__all__ = ["ColorScale", "choose_scale", "colorize", "normalize_map", "overlay"]
