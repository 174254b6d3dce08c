from __future__ import annotations

import numpy as np
import pytest
import torch

from cnnlens.attribution import create, resolve_targets
from cnnlens.attribution.core.targets import explain_targets
from cnnlens.errors import UnknownNameError
from tests.conftest import tiny_loaded

LOGITS = torch.tensor([[0.1, 2.0, 0.3], [3.0, 0.0, 1.0]])
NAMES = ["cat", "dog", "Tiger Cat"]


def test_none_is_top1() -> None:
    assert resolve_targets(None, LOGITS).tolist() == [1, 0]


@pytest.mark.parametrize("target", [2, "2", "tiger cat", "TIGER CAT", np.int64(2), torch.tensor(2)])
def test_one_target_for_all(target: object) -> None:
    assert resolve_targets(target, LOGITS, NAMES).tolist() == [2, 2]  # type: ignore[arg-type]


def test_one_per_input() -> None:
    assert resolve_targets(["dog", 0], LOGITS, NAMES).tolist() == [1, 0]
    assert resolve_targets(torch.tensor([2, 1]), LOGITS).tolist() == [2, 1]


def test_errors() -> None:
    with pytest.raises(ValueError, match="out of range .* 3 classes"):
        resolve_targets(3, LOGITS)
    with pytest.raises(ValueError, match="out of range"):
        resolve_targets(-1, LOGITS)
    with pytest.raises(KeyError, match="closest: cat"):
        resolve_targets("cta", LOGITS, NAMES)
    with pytest.raises(ValueError, match="no class names"):
        resolve_targets("cat", LOGITS, None)
    with pytest.raises(ValueError, match="3 targets for 2 inputs"):
        resolve_targets([0, 1, 2], LOGITS)
    with pytest.raises(TypeError, match="class index or name"):
        resolve_targets(1.5, LOGITS)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="not a bool"):
        resolve_targets(True, LOGITS)


def test_a_list_for_one_input_says_how_to_explain_several_classes() -> None:
    with pytest.raises(
        ValueError, match=r"2 targets for 1 inputs.*explain_targets\(method, inputs, targets\)"
    ):
        resolve_targets(["cat", "dog"], LOGITS[:1], NAMES)


@pytest.mark.parametrize("name", ["occlusion", "gradcam"])
def test_explain_targets_one_explanation_per_target(name: str, images: torch.Tensor) -> None:
    method = create(name, tiny_loaded(), **({"window": 8, "stride": 8} if name == "occlusion" else {}))
    one = images[0]
    cat, dog, bird = explain_targets(method, one, ["cat", "DOG", 2])
    assert [len(e) for e in (cat, dog, bird)] == [1, 1, 1]
    assert [e.target_name() for e in (cat, dog, bird)] == ["cat", "dog", "bird"]
    for target, exp in zip(("cat", "dog", 2), (cat, dog, bird)):
        assert torch.equal(exp.attributions, method.explain(one, target).attributions)
    assert not torch.equal(cat.attributions, dog.attributions)
    # a batch: each explanation covers every input for its target
    both = explain_targets(method, images[:2], [1, 0])
    assert [e.targets.tolist() for e in both] == [[1, 1], [0, 0]]
    (single,) = explain_targets(method, one, "bird")  # one target, not its letters
    assert single.target_name() == "bird"


def test_explain_targets_checks_every_name_before_working(images: torch.Tensor) -> None:
    calls: list[object] = []
    method = create("gradcam", tiny_loaded())
    original = method.explain

    def counting(*args: object, **kwargs: object) -> object:
        calls.append(args)
        return original(*args, **kwargs)  # type: ignore[arg-type]

    method.explain = counting  # type: ignore[method-assign]
    with pytest.raises(UnknownNameError, match="closest: dog"):
        explain_targets(method, images[0], ["cat", "dgo"])
    assert calls == []
    with pytest.raises(ValueError, match="at least one target"):
        explain_targets(method, images[0], [])
