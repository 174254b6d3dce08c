"""The set-up the probing tools share: checked inputs, the model held and restored, layer and targets."""

from __future__ import annotations

import pytest
import torch

from cnnlens.probing.common import probing
from tests.attribution.layer_models import Mixer, seeded
from tests.attribution.test_contract import assert_same, snapshot
from tests.conftest import tiny_loaded

X = torch.randn(1, 3, 8, 8, generator=torch.Generator().manual_seed(3))


def test_the_model_is_held_frozen_in_eval_mode_and_restored_even_after_an_error() -> None:
    model = seeded(Mixer).train()
    before = snapshot(model)
    seen = []

    def inside() -> None:
        with probing(model, X[0]) as probe:
            seen.append((probe.module is model, probe.inputs.shape, model.training))
            seen.append(any(p.requires_grad for p in model.parameters()))
            raise RuntimeError("inside")

    with pytest.raises(RuntimeError, match="inside"):
        inside()
    assert seen == [(True, (1, 3, 8, 8), False), False]
    assert_same(before, snapshot(model))


def test_inputs_are_checked_before_anything_runs() -> None:
    model = seeded(Mixer)
    with pytest.raises(ValueError, match="expects 3 input channels, got 1"), probing(model, X[:, :1]):
        pass
    with pytest.raises(TypeError, match="float tensor"), probing(model, X.long()):
        pass


def test_layer_and_targets_of_a_loaded_model_and_of_a_plain_module() -> None:
    loaded = tiny_loaded()
    with probing(loaded, torch.randn(2, 3, 16, 16)) as probe:
        assert probe.layer(None) == loaded.layer(None)
        logits = torch.tensor([[0.0, 2.0, 1.0], [3.0, 0.0, 1.0]])
        assert probe.targets(None, logits).tolist() == [1, 0]
        assert probe.targets("bird", logits).tolist() == [2, 2]
        assert probe.target_name(1) == "dog"
    with probing(seeded(Mixer), X) as probe:
        assert probe.layer("conv")[0] == "conv" and probe.target_name(1) == "1"
        with pytest.raises(ValueError, match="give layer="):
            probe.layer(None)
        with pytest.raises(KeyError, match="closest: conv"):
            probe.layer("cnv")
