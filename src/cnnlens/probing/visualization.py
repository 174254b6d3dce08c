"""Feature visualisation: an image optimised to excite one unit or one class (activation maximisation).

Plain gradient ascent on pixels gives high-frequency noise that excites the unit without showing
anything. Following Olah, Mordvintsev and Schubert (2017), the image is

* parameterised in a decorrelated space: its 2-D Fourier coefficients, each scaled by ``1 / f`` (so
  every spatial frequency starts with the same energy as in natural images and low frequencies are
  learned as fast as high ones), with the colour channels decorrelated by the square root of the
  ImageNet colour covariance (lucid's ``color_correlation_svd_sqrt``) and a sigmoid to [0, 1];
* seen by the network only through random transformations at each step: padding, jitter (random
  shifts), scaling and rotation, so that only patterns that survive them are reinforced.

The objective is the unit's mean activation over its feature map (``--unit``), taken before the
layer's final ReLU when it ends with one (as lucid visualises ``*_pre_relu`` layers: a unit that is
silent on the grey starting image would have no gradient after it), or the class logit
(``--class``); Adam does the ascent. Every random draw comes from one generator seeded by ``seed``,
so a run is reproducible.

References:
    Olah, Mordvintsev, Schubert. Feature Visualization. Distill, 2017.
    Mordvintsev, Pezzotti, Schubert, Olah. Differentiable Image Parameterizations. Distill, 2018.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from cnnlens.attribution.core.base import ModelLike
from cnnlens.data.transforms import Preprocessing
from cnnlens.errors import InputError
from cnnlens.models.loaded import LoadedModel
from cnnlens.probing.common import probing
from cnnlens.probing.units import check_unit, final_rectifier, layer_output, pre_activation
from cnnlens.validation import check_positive_int, check_real

#: Square root of the ImageNet colour covariance (rows: R, G, B), as in lucid.
COLOUR_SQRT = torch.tensor([[0.26, 0.09, 0.02], [0.27, 0.00, -0.05], [0.27, -0.09, 0.03]])


class FourierImage(nn.Module):
    """An image whose parameters are its scaled, colour-decorrelated 2-D Fourier coefficients.

    Args:
        size: ``(H, W)``.
        channels: 3 (colour decorrelated) or 1.
        generator: The random generator of the initial coefficients.
        std: Standard deviation of the initial coefficients.
        decay: The spectrum's ``1 / f ** decay`` scaling.
    """

    def __init__(
        self,
        size: tuple[int, int],
        channels: int,
        generator: torch.Generator,
        std: float = 0.01,
        decay: float = 1.0,
    ) -> None:
        super().__init__()
        h, w = size
        fy = torch.fft.fftfreq(h)[:, None]
        fx = torch.fft.rfftfreq(w)[None, :]
        freq = torch.sqrt(fx**2 + fy**2).clamp(min=1.0 / max(h, w))
        self.scale: torch.Tensor
        self.register_buffer("scale", (1.0 / freq**decay) * math.sqrt(h * w) / max(h, w))
        self.size = size
        self.channels = channels
        self.spectrum = nn.Parameter(std * torch.randn(channels, h, w // 2 + 1, 2, generator=generator))

    def forward(self) -> torch.Tensor:
        """The ``(1, C, H, W)`` image in [0, 1]."""
        coeffs = torch.view_as_complex(self.spectrum) * self.scale
        img = torch.fft.irfft2(coeffs, s=self.size, norm="ortho") / 4.0
        if self.channels == 3:
            colour = COLOUR_SQRT / COLOUR_SQRT.norm(dim=0).max()
            img = torch.einsum("ij,jhw->ihw", colour.to(img), img)
        return torch.sigmoid(img)[None]


@dataclass(frozen=True)
class Transforms:
    """The random transformations of each step (Olah et al. 2017's ``standard_transforms``).

    Attributes:
        pad: Pixels of constant (grey) padding on each side.
        jitter: Largest shift, in pixels.
        scales: Largest relative change of scale (scale drawn in ``1 +- scales``).
        degrees: Largest rotation, in degrees.
    """

    pad: int = 8
    jitter: int = 8
    scales: float = 0.1
    degrees: float = 10.0

    def __call__(self, img: torch.Tensor, g: torch.Generator) -> torch.Tensor:
        h, w = img.shape[-2:]
        x = F.pad(img, [self.pad] * 4, value=0.5)
        u = torch.rand(4, generator=g) * 2 - 1
        scale = 1.0 + self.scales * float(u[0])
        angle = math.radians(self.degrees * float(u[1]))
        dx, dy = (self.jitter * float(v) for v in u[2:])
        big_h, big_w = x.shape[-2:]
        cos, sin = math.cos(angle) / scale, math.sin(angle) / scale
        theta = torch.tensor(
            [[cos, -sin, 2 * dx / big_w], [sin, cos, 2 * dy / big_h]], dtype=x.dtype, device=x.device
        )
        grid = F.affine_grid(theta[None], list(x.shape), align_corners=False)
        x = F.grid_sample(x, grid, mode="bilinear", padding_mode="border", align_corners=False)
        top, left = (big_h - h) // 2, (big_w - w) // 2
        return x[..., top : top + h, left : left + w]


@dataclass
class Visualization:
    """What :func:`visualize` made.

    Attributes:
        objective: What was maximised, e.g. ``"features.2 unit 5"`` or ``"class 3 (tabby)"``.
        image: ``(C, H, W)`` the optimised image in [0, 1].
        curve: The objective at each step.
        settings: The settings used (steps, size, seed, lr, transforms).
    """

    objective: str
    image: torch.Tensor
    curve: list[float]
    settings: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {
            "objective": self.objective,
            "start": self.curve[0],
            "final": self.curve[-1],
            "curve": self.curve,
            **self.settings,
        }


Objective = Callable[[nn.Module, torch.Tensor], torch.Tensor]


def visualize(
    model: ModelLike,
    *,
    layer: str | None = None,
    unit: int | None = None,
    target: int | None = None,
    preprocessing: Preprocessing | None = None,
    steps: int = 256,
    size: int | None = None,
    seed: int = 0,
    lr: float = 0.05,
    transforms: Transforms | None = None,
    neuron: bool = False,
    progress: Callable[[float], None] | None = None,
) -> Visualization:
    """Optimise an image to maximise ``layer``'s ``unit`` (its mean activation) or class ``target``.

    Args:
        model: The classifier (a :class:`LoadedModel` brings its preprocessing and class names).
        layer: Dotted name of a layer with a ``(N, K, h, w)`` output (with ``unit``).
        unit: The unit (channel) of ``layer``.
        target: A class index, instead of ``layer`` and ``unit``.
        preprocessing: The model's normalisation (needed for a plain ``nn.Module``).
        steps: Optimisation steps.
        size: Side of the square image (default: the model's input size).
        seed: Seed of every random draw (initial image and transformations).
        lr: Adam's learning rate.
        transforms: The random transformations (default :class:`Transforms`, scaled to the size).
        neuron: Maximise the unit at the centre of its feature map (lucid's "neuron" objective)
            instead of its mean over the map ("channel"): one instance of the pattern, not a tiling.
        progress: Called with the objective after each step.

    Raises:
        InputError: Neither or both of a unit and a class, an unknown layer, a unit or class out of
            range, bad settings.
    """
    if (unit is None) == (target is None) or (unit is not None and layer is None):
        raise InputError("give either --layer and --unit, or --class")
    steps = check_positive_int("steps", steps)
    lr = check_real("lr", lr)
    if lr <= 0:
        raise InputError(f"--lr must be positive, got {lr:g}")
    if preprocessing is None:
        if not isinstance(model, LoadedModel):
            raise InputError("give preprocessing= for a plain nn.Module")
        preprocessing = model.preprocessing
    side = check_positive_int("size", size if size is not None else preprocessing.input_size[0])
    if side < 8:
        raise InputError(f"--size must be at least 8 pixels, got {side}")
    tf = transforms or Transforms(pad=max(1, side // 16), jitter=max(1, side // 16))
    g = torch.Generator().manual_seed(seed)
    param = FourierImage((side, side), preprocessing.channels, g)
    mean = torch.tensor(preprocessing.mean).view(1, -1, 1, 1)
    std = torch.tensor(preprocessing.std).view(1, -1, 1, 1)
    with probing(model, torch.zeros(1, preprocessing.channels, side, side)) as probe:
        device = probe.inputs.device
        param.to(device)
        mean, std = mean.to(device), std.to(device)
        score, name = _objective(probe.module, probe, layer, unit, target, neuron)
        optimiser = torch.optim.Adam(param.parameters(), lr=lr)
        curve: list[float] = []
        for _ in range(steps):
            optimiser.zero_grad()
            x = (tf(param(), g) - mean) / std
            value = score(x)
            (-value).backward()
            optimiser.step()
            curve.append(float(value.detach()))
            if progress:
                progress(curve[-1])
        with torch.no_grad():
            image = param()[0].cpu()
    settings = {
        "neuron": neuron,
        "steps": steps,
        "size": side,
        "seed": seed,
        "lr": lr,
        "transforms": vars(tf),
    }
    return Visualization(name, image, curve, settings)


def _objective(
    module: nn.Module, probe: Any, layer: str | None, unit: int | None, target: int | None, neuron: bool
) -> tuple[Callable[[torch.Tensor], torch.Tensor], str]:
    if target is not None:
        with torch.no_grad():
            classes = int(module(probe.inputs).shape[1])
        if not 0 <= target < classes:
            raise InputError(
                f"--class {target} is out of range: the model has {classes} classes (0-{classes - 1})"
            )
        return (lambda x: module(x)[0, target]), f"class {target} ({probe.target_name(target)})"
    assert layer is not None and unit is not None  # checked by visualize
    name, layer_module = probe.layer(layer)
    with torch.no_grad():  # check the layer and the unit before optimising
        check_unit(unit, int(layer_output(module, name, layer_module, probe.inputs).shape[1]), name)

    rectifier = final_rectifier(layer_module)

    def score(x: torch.Tensor) -> torch.Tensor:
        if rectifier is not None:  # before the layer's ReLU, so a unit silent on grey has a gradient
            fmap = pre_activation(module, layer_module, rectifier, x)[0, unit]
        else:
            fmap = layer_output(module, name, layer_module, x)[0, unit]
        return fmap[fmap.shape[0] // 2, fmap.shape[1] // 2] if neuron else fmap.mean()

    return score, f"{name} unit {unit}" + (" (centre)" if neuron else "")
