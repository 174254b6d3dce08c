"""Class sensitivity (issue 21), the random-reference flag, and masks that fill the crop."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from cnnlens.data.masks import sample_mask
from cnnlens.data.transforms import Preprocessing
from cnnlens.evaluation import Sample, create_metric
from cnnlens.evaluation.benchmark import flag_below_random, usable_mask
from cnnlens.evaluation.sensitivity import other_class, pearson
from cnnlens.report.benchmark import benchmark_report


class FixedLogits(nn.Module):
    """Ignores the image; returns the given logits."""

    def __init__(self, logits: list[float]) -> None:
        super().__init__()
        self.register_buffer("logits", torch.tensor([logits]))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.logits.expand(len(x), -1)


def test_the_other_class_is_the_next_most_probable() -> None:
    logits = torch.tensor([0.1, 3.0, 2.0, -1.0, 2.5])
    assert other_class(logits, 1, 1) == 4 and other_class(logits, 1, 2) == 2
    assert other_class(logits, 4, 1) == 1  # a target that is not the top-1: the top-1
    with pytest.raises(ValueError, match="rank 5"):
        other_class(logits, 1, 5)


def test_class_sensitivity_is_the_correlation_with_the_other_class_map() -> None:
    """The explainer returns a map per class: ``a`` for the target, ``b = 0.5 a + noise`` for class 2,
    so the metric is their Pearson correlation (checked against NumPy), computed for class 2."""
    g = torch.Generator().manual_seed(0)
    a, noise = torch.rand(8, 8, generator=g), torch.rand(8, 8, generator=g)
    maps = {0: a, 2: 0.5 * a + noise, 1: -a}
    asked: list[int] = []

    def explain(model: nn.Module, x: torch.Tensor, target: int) -> torch.Tensor:
        asked.append(target)
        return maps[target]

    sample = Sample(a, torch.rand(1, 3, 8, 8), FixedLogits([5.0, 1.0, 4.0]), 0, explain=explain)
    result = create_metric("class_sensitivity")(sample)
    expected = np.corrcoef(a.flatten().numpy(), maps[2].flatten().numpy())[0, 1]
    assert asked == [2] and result.extras["other_class"] == 2
    assert result.value == pytest.approx(expected, abs=1e-6) and 0.2 < result.value < 0.95
    assert create_metric("class_sensitivity", rank=2)(sample).value == pytest.approx(-1.0)
    same = Sample(a, torch.rand(1, 3, 8, 8), FixedLogits([5.0, 1.0, 4.0]), 0, explain=lambda m, x, t: a)
    assert create_metric("class_sensitivity")(same).value == pytest.approx(1.0)


def test_pearson_of_constant_maps() -> None:
    assert pearson(torch.ones(3, 3), torch.ones(3, 3)) == 1.0
    assert pearson(torch.ones(3, 3), torch.rand(3, 3)) == 0.0


def _cell(mean: float) -> dict[str, float | int | dict[str, float]]:
    return {"mean": mean, "ci95": math.nan, "n": 1, "per_image": {}}


def test_rows_that_do_not_beat_the_random_reference_are_flagged(tmp_path: Path) -> None:
    table = [
        {"row": "good", "reference": False, "metrics": {"up": _cell(0.6), "down": _cell(0.2)}},
        {"row": "tie", "reference": False, "metrics": {"up": _cell(0.4), "down": _cell(0.9)}},
        {"row": "nan", "reference": False, "metrics": {"up": _cell(math.nan), "down": _cell(0.1)}},
        {"row": "reference: random", "reference": True, "metrics": {"up": _cell(0.4), "down": _cell(0.5)}},
    ]
    flag_below_random(table, {"up": True, "down": False})
    flags = {r["row"]: {k: c["flag"] for k, c in r["metrics"].items()} for r in table}
    assert flags == {
        "good": {"up": False, "down": False},
        "tie": {"up": True, "down": True},  # equal is not better; 0.9 is worse on a lower-is-better metric
        "nan": {"up": False, "down": False},
        "reference: random": {"up": False, "down": False},
    }
    metrics = [
        {"name": n, "category": "localisation", "higher_is_better": n == "up", "summary": "", "reference": ""}
        for n in ("up", "down")
    ]
    summary = {
        "model": {"name": "m", "arch": "a", "source": "s"},
        "images": [{"stem": "chelsea", "target": 1, "class_name": "cat", "note": "unusable: fills"}],
        "methods": [{"name": "tie", "params": {}, "class_sensitive": False}],
        "metrics": metrics,
        "table": table,
        "curves": {},
    }
    html = benchmark_report(summary, tmp_path).read_text()
    assert html.count("not better than random") == 2
    assert "class-insensitive by nature" in html and "unusable: fills" in html


def test_a_mask_that_fills_the_crop_is_not_used_for_localisation() -> None:
    pre = Preprocessing()  # ImageNet: resize 256, centre crop 224
    view, why = usable_mask(sample_mask("chelsea"), pre)
    assert view is None and "covers 100% of the model's crop" in why
    for name in ("coffee", "rocket", "motorcycle", "grace_hopper"):  # the object, not the whole crop
        view, why = usable_mask(sample_mask(name), pre)
        assert view is not None and why == "" and 0.03 < view.mean() < 0.7, name
    assert usable_mask(None, pre) == (None, "no mask for this image")
