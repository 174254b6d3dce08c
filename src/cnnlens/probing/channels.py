"""Shapley values of the channels (feature maps) of one layer for one image's target score.

The players are the ``C`` channels of the layer's output ``A``. A coalition ``S`` keeps its channels
and replaces every other channel by a baseline (zero, or a dataset mean the caller gives):
``v(S) = f_after(A_S)``, the target logit of the network after the layer. Only that part of the network
runs per coalition (:func:`~cnnlens.attribution.engine.split.suffix_runner`); the part before it runs once.

Values are estimated by permutation sampling with antithetic pairs (each permutation together with
its reverse). Within one permutation the marginal contributions telescope, so the values sum exactly
to ``v(all) - v(none)`` after any number of permutations (efficiency). The standard error of each
value is that of the mean over antithetic pairs; sampling can stop when every standard error is below
a requested level. For small ``C`` the values are enumerated exactly over all ``2**C`` coalitions.

What a channel responds to: :func:`channel_patches` finds where it fires most, in the explained image
or in a set of probe images, and the patch of the input around that peak (the unit's receptive field).
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from cnnlens.attribution.core.base import ModelLike, target_scores
from cnnlens.attribution.core.targets import Target
from cnnlens.attribution.engine.runner import feature_map
from cnnlens.attribution.engine.split import SuffixRunner, suffix_runner
from cnnlens.errors import InputError, InputTypeError
from cnnlens.models.hooks import capture_outputs
from cnnlens.probing.common import probing
from cnnlens.validation import check_int_at_least, check_positive_int

log = logging.getLogger(__name__)

#: Largest channel count enumerated exactly (2**16 coalitions).
EXACT_LIMIT = 16
#: Channel counts up to which ``method="auto"`` enumerates exactly.
AUTO_EXACT = 10
MIN_PAIRS = 4


@dataclass
class ChannelShapley:
    """Shapley values of one layer's channels for one image and target.

    Attributes:
        layer: Dotted layer name.
        target: Class explained; ``target_name`` its name.
        values: ``(C,)`` float64 Shapley values (target logit units).
        stderr: ``(C,)`` standard error of each value (zeros when exact).
        full: ``v(all channels)``, the target logit of the unmodified network.
        empty: ``v(no channel)``, the target logit with every channel at its baseline.
        method: ``"exact"`` or ``"permutation"``.
        permutations: Permutations sampled (0 when exact).
        evaluations: Coalitions evaluated by the network after the layer.
        activations: ``(C, h, w)`` the layer's feature maps for the image.
        seconds: Wall time.
        suffix_mode: How the rest of the network ran (``"fx"``, ``"hook"``, ``"full"``).
        baseline: ``"zero"``, ``"mean"`` or ``"tensor"``.
    """

    layer: str
    target: int
    target_name: str
    values: torch.Tensor
    stderr: torch.Tensor
    full: float
    empty: float
    method: str
    permutations: int
    evaluations: int
    activations: torch.Tensor
    seconds: float
    suffix_mode: str
    baseline: str
    extras: dict[str, Any] = field(default_factory=dict)

    def ranking(self) -> list[dict[str, Any]]:
        """One row per channel, by decreasing value: rank, channel, value, stderr, activation stats."""
        order = torch.argsort(self.values, descending=True).tolist()
        acts = self.activations.flatten(1)
        return [
            {
                "rank": r + 1,
                "channel": c,
                "shapley": float(self.values[c]),
                "stderr": float(self.stderr[c]),
                "mean_activation": float(acts[c].mean()),
                "max_activation": float(acts[c].max()),
            }
            for r, c in enumerate(order)
        ]

    def top(self, k: int = 5) -> tuple[list[int], list[int]]:
        """The ``k`` most positive and the ``k`` most negative channels (each only if of that sign)."""
        order = torch.argsort(self.values, descending=True).tolist()
        pos = [c for c in order[:k] if self.values[c] > 0]
        neg = [c for c in reversed(order[-k:]) if self.values[c] < 0]
        return pos, neg

    def summary(self) -> dict[str, Any]:
        """Everything but the per-channel rows, JSON-ready."""
        return {
            "layer": self.layer,
            "target": self.target,
            "target_name": self.target_name,
            "channels": len(self.values),
            "full": self.full,
            "empty": self.empty,
            "sum_of_values": float(self.values.sum()),
            "method": self.method,
            "permutations": self.permutations,
            "evaluations": self.evaluations,
            "max_stderr": float(self.stderr.max()),
            "seconds": self.seconds,
            "suffix_mode": self.suffix_mode,
            "baseline": self.baseline,
            **self.extras,
        }


class CoalitionGame:
    """``v(S)`` for batches of channel masks, through the network after the layer.

    Args:
        runner: The suffix bound to the image.
        baseline: ``(1, C, h, w)`` what a removed channel becomes.
        target: Class index whose logit is the value.
        batch_size: Coalitions per pass.
    """

    def __init__(self, runner: SuffixRunner, baseline: torch.Tensor, target: int, batch_size: int) -> None:
        self.runner = runner
        self.base = baseline
        self.delta = runner.activation - baseline
        self.target = target
        self.batch_size = batch_size
        self.evaluations = 0

    def __call__(self, masks: torch.Tensor) -> torch.Tensor:
        """``(B, C)`` 0/1 masks (1: the channel is kept) -> ``(B,)`` float64 values."""
        out = []
        for chunk in masks.split(self.batch_size):
            acts = self.base + chunk.to(self.delta)[:, :, None, None] * self.delta
            t = torch.full((len(chunk),), self.target, device=acts.device)
            out.append(target_scores(self.runner(acts), t).double().cpu())
            self.evaluations += len(chunk)
        return torch.cat(out)


def exact_shapley(game: CoalitionGame, channels: int) -> torch.Tensor:
    """Shapley values by enumerating all ``2**C`` coalitions: ``(C,)`` float64.

    ``phi_i = sum_{S not containing i} |S|! (C - |S| - 1)! / C! (v(S + i) - v(S))``.
    """
    if channels > EXACT_LIMIT:
        raise InputError(
            f"exact enumeration needs 2**{channels} coalitions; it is limited to {EXACT_LIMIT} channels, "
            "use permutation sampling (samples= or stderr=)"
        )
    codes = torch.arange(2**channels)
    bits = (codes[:, None] >> torch.arange(channels)) & 1
    values = game(bits.float())
    size = bits.sum(dim=1)
    weight = torch.tensor(
        [
            math.factorial(s) * math.factorial(channels - s - 1) / math.factorial(channels)
            for s in range(channels)
        ],
        dtype=torch.float64,
    )
    phi = torch.zeros(channels, dtype=torch.float64)
    for i in range(channels):
        without = codes[bits[:, i] == 0]
        phi[i] = (weight[size[without]] * (values[without | (1 << i)] - values[without])).sum()
    return phi


def permutation_chain(order: torch.Tensor) -> torch.Tensor:
    """The ``C - 1`` coalitions strictly between none and all along one permutation: ``(C-1, C)`` masks."""
    c = len(order)
    rank = torch.empty(c, dtype=torch.long)
    rank[order] = torch.arange(c)
    return (rank[None, :] < torch.arange(1, c)[:, None]).float()


def marginals(order: torch.Tensor, chain: torch.Tensor, empty: float, full: float) -> torch.Tensor:
    """Each channel's marginal contribution along ``order`` given the chain's values: ``(C,)`` float64.

    The endpoints are the shared ``v(none)`` and ``v(all)``, so the contributions sum to ``full - empty``.
    """
    values = torch.cat(
        [torch.tensor([empty], dtype=torch.float64), chain, torch.tensor([full], dtype=torch.float64)]
    )
    phi = torch.empty(len(order), dtype=torch.float64)
    phi[order] = values[1:] - values[:-1]
    return phi


def sampled_shapley(
    game: CoalitionGame,
    channels: int,
    *,
    empty: float,
    full: float,
    pairs: int | None,
    stderr: float | None,
    max_pairs: int,
    seed: int,
) -> tuple[torch.Tensor, torch.Tensor, int]:
    """Antithetic permutation sampling: values, standard errors and the number of pairs used.

    Runs ``pairs`` antithetic pairs, or (with ``stderr``) pairs until every standard error is at most
    ``stderr`` (at least :data:`MIN_PAIRS`, at most ``max_pairs``).
    """
    gen = torch.Generator().manual_seed(seed)
    per_group = max(1, game.batch_size // (2 * max(1, channels - 1)))
    samples: list[torch.Tensor] = []
    goal = pairs if pairs is not None else max_pairs
    while len(samples) < goal:
        group = min(per_group, goal - len(samples))
        if stderr is not None:  # check often at first, then double: at most 2x the pairs needed
            group = min(group, max(MIN_PAIRS, len(samples)))
        orders = [torch.randperm(channels, generator=gen) for _ in range(group)]
        orders = [o for first in orders for o in (first, first.flip(0))]
        chains = game(torch.cat([permutation_chain(o) for o in orders])).split(channels - 1)
        phis = [marginals(o, ch, empty, full) for o, ch in zip(orders, chains)]
        samples += [(phis[i] + phis[i + 1]) / 2 for i in range(0, len(phis), 2)]
        if stderr is not None and len(samples) >= MIN_PAIRS and float(_stderr(samples).max()) <= stderr:
            break
    if stderr is not None and float(_stderr(samples).max()) > stderr:
        log.warning(
            "stopped at %d pairs with standard error %.3g > %.3g",
            len(samples),
            _stderr(samples).max(),
            stderr,
        )
    stack = torch.stack(samples)
    return stack.mean(dim=0), _stderr(samples), len(samples)


def _stderr(samples: list[torch.Tensor]) -> torch.Tensor:
    if len(samples) < 2:
        return torch.full_like(samples[0], float("inf"))
    stack = torch.stack(samples)
    return stack.std(dim=0, unbiased=True) / math.sqrt(len(samples))


def channel_baseline(baseline: str | torch.Tensor, activation: torch.Tensor) -> tuple[torch.Tensor, str]:
    """What a removed channel becomes: ``"zero"``, or a ``(C,)`` / ``(C, h, w)`` tensor (a dataset mean)."""
    if isinstance(baseline, str):
        if baseline != "zero":
            raise InputError(
                f"baseline {baseline!r}: give 'zero' or a tensor of mean activations "
                "(see mean_activation); for 'mean' compute one from a set of images"
            )
        return torch.zeros_like(activation), "zero"
    if not isinstance(baseline, torch.Tensor):
        raise InputTypeError(f"baseline must be 'zero' or a tensor, got {type(baseline).__name__}")
    c, h, w = activation.shape[1:]
    b = baseline.to(activation)
    if b.shape == (c,):
        b = b[:, None, None]
    if b.shape not in ((c, 1, 1), (c, h, w), (1, c, h, w)):
        raise InputError(
            f"baseline of shape {tuple(baseline.shape)} does not fit the layer's output (C, h, w) = "
            f"({c}, {h}, {w}); give (C,) or (C, h, w)"
        )
    return b.reshape(1, c, *b.shape[-2:]).expand_as(activation).contiguous(), "tensor"


def mean_activation(
    model: ModelLike, images: torch.Tensor, layer: str | nn.Module, batch_size: int = 32
) -> torch.Tensor:
    """The mean ``(C, h, w)`` output of ``layer`` over a batch of preprocessed images (a dataset mean)."""
    sums = []
    with probing(model, images) as probe, torch.inference_mode():
        name, target = probe.layer(layer)
        for chunk in probe.inputs.split(batch_size):
            with capture_outputs({name: target}) as store:
                probe.module(chunk)
            if name not in store:
                raise InputError(f"layer {name!r} did not run in the forward pass")
            sums.append(store[name].float().sum(dim=0))
    return torch.stack(sums).sum(dim=0) / len(probe.inputs)


def channel_shapley(
    model: ModelLike,
    inputs: torch.Tensor,
    target: Target = None,
    *,
    layer: str | nn.Module | None = None,
    baseline: str | torch.Tensor = "zero",
    method: str = "auto",
    samples: int | None = None,
    stderr: float | None = None,
    max_permutations: int = 2000,
    seed: int = 0,
    batch_size: int = 256,
    suffix_mode: str = "auto",
) -> ChannelShapley:
    """Shapley values of the channels of ``layer`` for one image's target logit.

    Args:
        model: The classifier.
        inputs: One preprocessed image ``(1, C, H, W)`` or ``(C, H, W)``.
        target: Class index or name (default: the top-1 class).
        layer: Dotted name or module (default: the model's CAM layer).
        baseline: ``"zero"`` or a ``(C,)`` / ``(C, h, w)`` tensor of dataset-mean activations
            (:func:`mean_activation`).
        method: ``"exact"``, ``"permutation"`` or ``"auto"`` (exact up to 10 channels).
        samples: Permutations to sample (rounded up to an even number: antithetic pairs).
        stderr: Sample until every value's standard error is at most this (instead of ``samples``).
        max_permutations: Upper bound when sampling to a standard error.
        seed: Seed of the permutations.
        batch_size: Coalitions per pass of the network after the layer.
        suffix_mode: How to run the network after the layer (see :func:`suffix_runner`).

    Returns:
        A :class:`ChannelShapley`.

    Raises:
        ValueError: Bad settings, several images, a layer without a ``(N, C, h, w)`` output.

    References:
        Shapley. A value for n-person games. 1953. Castro, Gomez, Tejada. Polynomial calculation of
        the Shapley value based on sampling. Computers & Operations Research 2009. Mitchell et al.
        Sampling Permutations for Shapley Value Estimation. JMLR 2022 (antithetic permutations).
    """
    _check_settings(method, samples, stderr, max_permutations, batch_size)
    with probing(model, inputs) as probe:
        x = probe.inputs
        if len(x) != 1:
            raise InputError(f"channel Shapley values explain one image at a time, got a batch of {len(x)}")
        runner = suffix_runner(probe.module, probe.layer(layer)[0], x, mode=suffix_mode)
        feature_map({runner.layer: runner.activation}, runner.layer, "channel Shapley values")
        t = int(probe.targets(target, runner.logits)[0])
        base, base_kind = channel_baseline(baseline, runner.activation)
        game = CoalitionGame(runner, base, t, batch_size)
        result = _solve(game, method, samples, stderr, max_permutations, seed)
    c = runner.activation.shape[1]
    return ChannelShapley(
        layer=runner.layer,
        target=t,
        target_name=probe.target_name(t),
        values=result[0],
        stderr=result[1],
        full=float(result[3]),
        empty=float(result[4]),
        method="exact" if result[2] == 0 else "permutation",
        permutations=2 * result[2],
        evaluations=game.evaluations,
        activations=runner.activation[0].float().cpu(),
        seconds=probe.seconds(),
        suffix_mode=runner.mode,
        baseline=base_kind,
        extras={"channels_total": c},
    )


def _check_settings(
    method: str, samples: int | None, stderr: float | None, max_permutations: int, batch_size: int
) -> None:
    if method not in ("auto", "exact", "permutation"):
        raise InputError(f"method must be 'auto', 'exact' or 'permutation', got {method!r}")
    if samples is not None and stderr is not None:
        raise InputError(
            "give either samples (a number of permutations) or stderr (a target error), not both"
        )
    if samples is not None:
        check_positive_int("samples", samples)
    if stderr is not None and not (isinstance(stderr, (int, float)) and stderr > 0):
        raise InputError(f"stderr must be a positive number, got {stderr!r}")
    check_int_at_least("max_permutations", max_permutations, 2)
    check_positive_int("batch_size", batch_size)


def _solve(
    game: CoalitionGame,
    method: str,
    samples: int | None,
    stderr: float | None,
    max_permutations: int,
    seed: int,
) -> tuple[torch.Tensor, torch.Tensor, int, float, float]:
    """Values, standard errors, antithetic pairs used (0: exact), v(all) and v(none)."""
    c = game.runner.activation.shape[1]
    ends = game(torch.stack([torch.zeros(c), torch.ones(c)]))
    empty, full = float(ends[0]), float(ends[1])
    exact = method == "exact" or (method == "auto" and c <= AUTO_EXACT and samples is None and stderr is None)
    if exact:
        return exact_shapley(game, c), torch.zeros(c, dtype=torch.float64), 0, full, empty
    if c == 1:
        return (
            torch.tensor([full - empty], dtype=torch.float64),
            torch.zeros(1, dtype=torch.float64),
            1,
            full,
            empty,
        )
    pairs = math.ceil((samples if samples is not None else 64) / 2) if stderr is None else None
    values, errors, used = sampled_shapley(
        game,
        c,
        empty=empty,
        full=full,
        pairs=pairs,
        stderr=stderr,
        max_pairs=max(1, max_permutations // 2),
        seed=seed,
    )
    return values, errors, used, full, empty
