"""The pass runner: the one place an attribution method's passes through the network are run.

A method says *what* it needs: the logits of some inputs (:meth:`PassRunner.logits`), the target scores
of a stream of perturbed batches (:meth:`PassRunner.scores`), or the gradients of the target scores with
respect to the input or to some layers (:meth:`PassRunner.gradient_passes`). The runner decides *how*,
from settings resolved once per ``explain`` call:

* ``precision``: ``"fp32"``, ``"bf16"`` or ``"auto"`` (:mod:`cnnlens.attribution.engine.precision`);
* ``memory_format``: the input layout (:mod:`cnnlens.attribution.engine.layout`);
* ``backend``: how inference passes run: ``"eager"`` (the model as it is), ``"fused"`` (the fused
  inference network of :mod:`cnnlens.attribution.engine.fused`, behind its capability probe and the
  check against the model's own logits made when it is built) or ``"auto"`` (fused where it applies,
  else eager). Gradient passes always run the model itself.

What ran is recorded (:meth:`PassRunner.record`) and saved with the explanation.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from cnnlens import capabilities
from cnnlens.attribution.engine.fused import FusedNetwork, fused_network, inference_pass
from cnnlens.attribution.engine.layout import check_memory_format, to_memory_format
from cnnlens.attribution.engine.precision import (
    bf16_is_native,
    evaluation_context,
    resolve_precision,
)
from cnnlens.errors import BackendError, InputError
from cnnlens.models.hooks import capture_outputs
from cnnlens.models.tokens import TokenLayout

BACKENDS = ("auto", "eager", "fused")

#: A target given as a function of the logits: ``(N, K)`` logits in, ``(N,)`` scores out.
Objective = Callable[[torch.Tensor], torch.Tensor]
#: What a gradient pass back-propagates: ``score(logits, recorded layer outputs, start)`` -> ``(B,)``.
ScoreFn = Callable[[torch.Tensor, dict[str, torch.Tensor], int], torch.Tensor]


def check_backend(backend: str) -> str:
    """Validate a ``backend=`` argument."""
    if backend not in BACKENDS:
        raise InputError(f"backend must be one of {', '.join(BACKENDS)}, got {backend!r}")
    return backend


def target_scores(
    logits: torch.Tensor, targets: torch.Tensor, kind: str = "logit", objective: Objective | None = None
) -> torch.Tensor:
    """Each row's target output, as a logit or a softmax probability: ``(N,)``.

    With ``objective`` (a target given as a function of the logits) it is ``objective(logits)``.
    """
    if objective is not None:
        return objective_scores(objective, logits)
    values = logits.float().softmax(dim=1) if kind == "probability" else logits.float()
    return values.gather(1, targets.view(-1, 1).to(values.device)).squeeze(1)


def objective_scores(objective: Objective, logits: torch.Tensor) -> torch.Tensor:
    """``objective(logits)`` checked to be one finite-shaped score per row: ``(N,)`` float."""
    out = objective(logits)
    if not isinstance(out, torch.Tensor) or out.shape != (len(logits),):
        shape = tuple(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
        raise InputError(
            f"a target function must map (N, K) logits to (N,) scores, got {shape} for N={len(logits)}"
        )
    return out.float()


def feature_map(store: dict[str, torch.Tensor], name: str, purpose: str = "this method") -> torch.Tensor:
    """The recorded ``(N, C, h, w)`` output of layer ``name``, or a clear error.

    A vision transformer's token layer is recorded as its grid of patch tokens when the capture was
    given the model's :class:`~cnnlens.models.tokens.TokenLayout` (``capture_outputs(..., tokens=)``).

    Raises:
        ValueError: The layer did not run, or its output is not a 4-d feature map.
    """
    if name not in store:
        raise InputError(f"layer {name!r} did not run in the forward pass; choose a layer the model calls")
    a = store[name]
    if a.ndim != 4:
        raise InputError(
            f"layer {name!r} outputs shape {tuple(a.shape)}, not a (N, C, h, w) feature map (needed by "
            f"{purpose}); choose a convolutional layer or block"
        )
    return a


@dataclass
class GradPass:
    """One chunk's forward and backward pass (see :meth:`PassRunner.gradient_passes`), detached.

    Attributes:
        start: Index of the chunk's first input.
        logits: ``(B, K)`` float32 logits.
        scores: ``(B,)`` the back-propagated scores.
        input_grad: ``(B, C, H, W)`` float32 gradient at the input (``None`` unless asked for).
        activations: The recorded layers' outputs, in the order the network ran them.
        gradients: The gradient at each recorded layer (zeros where the score does not depend on it).
    """

    start: int
    logits: torch.Tensor
    scores: torch.Tensor
    input_grad: torch.Tensor | None = None
    activations: dict[str, torch.Tensor] = field(default_factory=dict)
    gradients: dict[str, torch.Tensor] = field(default_factory=dict)


class PassRunner:
    """Runs one method's passes through ``module`` on ``device`` (see the module's docstring).

    Args:
        module: The network, in the state the explain template set (eval mode, parameters frozen).
        device: Where the passes run.
        precision: ``"fp32"``, ``"bf16"`` or ``"auto"``; ``"auto"`` is bf16 only where ``bf16_faithful``
            and the device has native bf16 kernels.
        memory_format: ``"auto"`` (channels_last for inference passes, contiguous for gradient
            passes), ``"channels_last"`` or ``"contiguous"``.
        backend: ``"auto"``, ``"eager"`` or ``"fused"``.
        bf16_faithful: Whether the method's bf16 maps were measured to stay faithful.
        objective: A target given as a function of the logits, used in place of the target class's
            logit or probability.

    Raises:
        ValueError: An unknown setting.
        PrecisionError: ``precision="bf16"`` where bf16 cannot run at all.
        BackendError: ``backend="fused"`` on a CPU without oneDNN's fused convolution.
    """

    def __init__(
        self,
        module: nn.Module,
        device: torch.device,
        *,
        precision: str = "fp32",
        memory_format: str = "auto",
        backend: str = "auto",
        bf16_faithful: bool = False,
        objective: Objective | None = None,
    ) -> None:
        self.module, self.device = module, device
        self.precision = resolve_precision(precision, device, bf16_faithful)
        self.memory_format = check_memory_format(memory_format)
        self.backend = check_backend(backend)
        if backend == "fused" and device.type == "cpu" and not capabilities.available("fused_conv", device):
            reason = capabilities.probe("fused_conv", device).reason
            raise BackendError(
                f"backend 'fused' cannot run on this CPU ({reason}); use backend 'eager', or 'auto'"
            )
        self.objective = objective
        self.used: set[str] = set()  # the backends inference passes actually ran on
        self._nets: dict[tuple[str, tuple[int, ...]], FusedNetwork | None] = {}

    # -- settings -----------------------------------------------------------------------------------

    def layout(self, *, gradients: bool) -> str:
        """The input layout of a pass: ``memory_format``, where ``"auto"`` is ``channels_last`` for
        inference passes and ``contiguous`` for back-propagated ones (channels_last speeds up inference
        passes of convolutional networks on the CPU but not a backward pass to the input)."""
        if self.memory_format != "auto":
            return self.memory_format
        return "contiguous" if gradients else "channels_last"

    @property
    def padding_free(self) -> bool:
        """Whether TensorFlow-"same" convolutions run without a padded copy of their input: on every
        backend but ``eager``, which runs the model exactly as it is."""
        return self.backend != "eager"

    def context(self) -> contextlib.AbstractContextManager[None]:
        """What a pass of the model itself runs under: autocast for bf16 with the network's ends in
        float32, and the padding-free "same" convolutions (:attr:`padding_free`)."""
        return evaluation_context(self.precision, self.device, self.module, padding_free=self.padding_free)

    def record(self) -> dict[str, Any]:
        """What ran, for the explanation's parameters: ``computed_in`` (the resolved precision), with
        bf16 ``bf16_kernels`` (``"native"`` or ``"emulated"``), and ``backend_used`` (by the inference
        passes: ``"fused"``, ``"eager"`` or both, when any ran; ``backend`` is what was asked for)."""
        out: dict[str, Any] = {"computed_in": self.precision}
        if self.precision == "bf16":
            out["bf16_kernels"] = "native" if bf16_is_native(self.device) else "emulated"
        if self.used:
            out["backend_used"] = "+".join(sorted(self.used))
        return out

    # -- scores -------------------------------------------------------------------------------------

    def target_scores(self, logits: torch.Tensor, targets: torch.Tensor, kind: str = "logit") -> torch.Tensor:
        """The scores a method explains: the target's logit or probability, or the objective's."""
        return target_scores(logits, targets, kind, self.objective)

    def _network(
        self, batch: torch.Tensor, precision: str, backend: str | None = None
    ) -> FusedNetwork | None:
        if (backend or self.backend) == "eager":
            return None
        key = (precision, tuple(batch.shape[1:]))
        if key not in self._nets:  # built once per model and image size, looked up once per call
            self._nets[key] = fused_network(self.module, batch, precision)
        return self._nets[key]

    def _infer(self, batch: torch.Tensor, precision: str, backend: str | None = None) -> torch.Tensor:
        net = self._network(batch, precision, backend)
        self.used.add("eager" if net is None else "fused")
        return inference_pass(self.module, batch, precision, net, padding_free=self.padding_free)

    def logits(self, inputs: torch.Tensor, batch_size: int, *, backend: str | None = None) -> torch.Tensor:
        """Float32 logits of ``inputs`` in chunks of ``batch_size``, without autograd: ``(N, K)``.

        Always float32 (targets and reported scores come from here, and a bf16 pass could flip a near
        tie); through the fused network where it applies, which reproduces the model to about 1e-5.
        ``backend="eager"`` skips building a fused network for a one-off pass.
        """
        with torch.inference_mode():
            layout = self.layout(gradients=False)
            chunks = [to_memory_format(c, layout) for c in inputs.split(batch_size)]
            return torch.cat([self._infer(c, "fp32", backend).float() for c in chunks])

    def scores(
        self,
        batches: Iterable[torch.Tensor],
        targets: torch.Tensor | int,
        kind: str = "logit",
        forward: Callable[[torch.Tensor], torch.Tensor] | None = None,
    ) -> torch.Tensor:
        """The target score of every sample of a stream of perturbed batches: ``(total,)``.

        ``forward`` replaces the whole model (e.g. the tail of a
        :class:`~cnnlens.attribution.engine.split.LayerSplit`); it runs under :meth:`context`. Whole-model
        passes run on the backend.
        """
        out = []
        with torch.inference_mode():
            for batch in batches:
                batch = to_memory_format(batch, self.layout(gradients=False))
                if forward is not None:
                    with self.context():
                        logits = forward(batch)
                else:
                    logits = self._infer(batch, self.precision)
                t = torch.full((len(batch),), targets) if isinstance(targets, int) else targets
                out.append(self.target_scores(logits, t, kind))
        return torch.cat(out) if out else torch.empty(0)

    def scores_of_targets(self, batch: torch.Tensor, targets: list[int], kind: str = "logit") -> torch.Tensor:
        """Several targets' scores of one batch from a single pass: ``(len(targets), B)``.

        For a method that explains the same input for several classes (the benchmark's grid cells
        share their grid): the pass is :meth:`scores`'s, the targets only pick columns of its logits.
        """
        with torch.inference_mode():
            logits = self._infer(to_memory_format(batch, self.layout(gradients=False)), self.precision)
            rows = [torch.full((len(batch),), t) for t in targets]
            return torch.stack([self.target_scores(logits, t, kind) for t in rows])

    # -- gradients ----------------------------------------------------------------------------------

    def gradient_passes(
        self,
        inputs: torch.Tensor,
        score: ScoreFn,
        batch_size: int,
        *,
        layers: dict[str, nn.Module] | None = None,
        wrt_input: bool = True,
        purpose: str = "this method",
        weights: torch.Tensor | None = None,
    ) -> Iterator[GradPass]:
        """Forward ``inputs`` in chunks and back-propagate ``score`` to the input and/or ``layers``.

        One forward and one ``torch.autograd.grad`` call per chunk: only the gradients asked for are
        computed (the caller has switched parameter gradients off). ``score(logits, store, start)``
        returns the ``(B,)`` scores whose sum is back-propagated; ``store`` holds the recorded layer
        outputs, each checked to be a 4-d feature map (``purpose`` names the method in that error); a
        vision transformer's token layer is recorded, and differentiated, as its grid of patch tokens.
        ``weights`` (one per input) scale each score in the back-propagated sum (0: no gradient needed).

        Yields:
            One :class:`GradPass` per chunk, gradients in float32 with the inputs' layout.
        """
        layers = layers or {}
        layout = self.layout(gradients=True)
        for start in range(0, len(inputs), batch_size):
            # the input always requires grad: with frozen parameters nothing else starts the graph
            x = inputs[start : start + batch_size].detach().requires_grad_(True)
            tokens = TokenLayout.of(self.module, (x.shape[2], x.shape[3]))
            with capture_outputs(layers, tokens=tokens) as store, torch.enable_grad(), self.context():
                logits = self.module(to_memory_format(x, layout)).float()
                names = [n for n in store if n in layers] + [n for n in layers if n not in store]
                acts = [feature_map(store, n, purpose) for n in names]
                scores = score(logits, store, start)
                wrt = ([x] if wrt_input else []) + acts
                total = scores if weights is None else scores * weights[start : start + len(scores)]
                grads = torch.autograd.grad(total.sum(), wrt, allow_unused=True)
            found = [torch.zeros_like(a) if g is None else g.detach().float() for a, g in zip(wrt, grads)]
            yield GradPass(
                start=start,
                logits=logits.detach(),
                scores=scores.detach(),
                input_grad=found[0] if wrt_input else None,
                activations={n: a.detach().float() for n, a in zip(names, acts)},
                gradients=dict(zip(names, found[1:] if wrt_input else found)),
            )
