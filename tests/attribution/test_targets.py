from __future__ import annotations

import numpy as np
import pytest
import torch

from cnnlens.attribution import resolve_targets

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
