"""The shape-bias score: Wilson's interval against known values, the counting on planted decisions,
and the cue-conflict pipeline's planted truth (a texture-only toy has shape bias 0)."""

from __future__ import annotations

import math

import numpy as np
import pytest

from cnnlens.errors import InputError
from cnnlens.hypothesis.shape_bias import CueConflict, shape_bias, summarise, wilson_interval
from tests.hypotheses.toys import BLUE, RED, colour_model, silhouette_model, texture


def test_wilson_interval_known_values() -> None:
    low, high = wilson_interval(5, 10)
    assert low == pytest.approx(0.2366, abs=1e-4) and high == pytest.approx(0.7634, abs=1e-4)
    low, high = wilson_interval(0, 20)
    assert low == 0.0 and high == pytest.approx(0.1611, abs=1e-4)
    assert all(math.isnan(v) for v in wilson_interval(0, 0))


def item(follows: str, shape_prob: float = 0.1, texture_prob: float = 0.2) -> CueConflict:
    return CueConflict("s", "t", "tile", 8, "a", "b", "c", follows, shape_prob, texture_prob)


def test_summary_counts() -> None:
    items = (
        [item("shape", 0.6, 0.1)] * 3 + [item("texture")] * 1 + [item("other", 0.3, 0.2)] * 2 + [item("both")]
    )
    r = summarise("toy", len(items), 0, items, [])
    assert (r.shape, r.texture, r.other, r.skipped) == (3, 1, 2, 1)
    assert r.shape_bias == 0.75 and (r.ci_low, r.ci_high) == wilson_interval(3, 4)
    assert r.forced_shape == 5 and r.forced_bias == pytest.approx(5 / 6)
    assert r.verdict().startswith("shape bias 0.75")


TEXTURES = {"bluish": texture(BLUE, 1), "reddish": texture(RED, 2)}


def test_texture_only_model_has_shape_bias_zero() -> None:
    model = colour_model()
    calls: list[int] = []
    model.module.register_forward_hook(lambda m, i, o: calls.append(len(i[0])))
    done: list[int] = []
    r = shape_bias(model, n=12, seed=0, kinds=("synth",), textures=TEXTURES, batch=8, progress=done.append)
    assert done == [8, 4] and calls[1:] == [16, 8]  # sources, then 2 images per item per batch
    assert {i.shape_class for i in r.items} == {"grey"}  # a silhouette has no colour
    assert r.texture == 12 and r.shape == 0 and r.shape_bias == 0.0 and r.forced_bias == 0.0
    assert r.verdict().startswith("shape bias 0.00")
    again = shape_bias(model, n=12, seed=0, kinds=("synth",), textures=TEXTURES, batch=8)
    assert again.to_dict() == r.to_dict()


def test_shape_only_model_has_shape_bias_one() -> None:
    r = shape_bias(silhouette_model(), n=16, seed=0, kinds=("synth",), textures=TEXTURES)
    assert {i.texture_class for i in r.items} == {"none"}  # a texture has no silhouette
    assert r.shape > 0 and r.texture == 0 and r.shape_bias == 1.0
    assert all(i.follows in ("shape", "both") for i in r.items)


def test_bad_inputs() -> None:
    with pytest.raises(InputError, match="--n"):
        shape_bias(colour_model(), n=0)
    with pytest.raises(InputError, match="--sources"):
        shape_bias(colour_model(), n=2, kinds=("clouds",))
    with pytest.raises(InputError, match="texture"):
        shape_bias(colour_model(), n=2, textures=())
    assert np.isnan(summarise("toy", 0, 0, [], []).shape_bias)
