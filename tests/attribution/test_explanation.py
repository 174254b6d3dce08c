"""Explanation: saving and loading everything it carries, method extras, and the mask rendering."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from PIL import Image

from cnnlens.attribution import Explanation, create
from cnnlens.pipeline import extras_summary
from tests.conftest import tiny_loaded

NAMES = ["cat", "dog", "bird"]


def made(n: int, extras: dict[str, Any], *, signed: bool = True) -> Explanation:
    return Explanation(
        attributions=torch.randn(n, 4, 5, generator=torch.Generator().manual_seed(0)),
        targets=torch.arange(n) % 3,
        scores=torch.linspace(0.2, 0.9, n),
        method="made_up",
        layer="features",
        params={"steps": 8},
        class_names=NAMES,
        signed=signed,
        extras=extras,
    )


def same(a: Any, b: Any) -> bool:
    """Equal values, tensors compared exactly, lists element by element."""
    if isinstance(a, torch.Tensor):
        return isinstance(b, torch.Tensor) and a.dtype == b.dtype and torch.equal(a, b)
    if isinstance(a, (list, tuple)):
        return isinstance(b, list) and len(a) == len(b) and all(same(x, y) for x, y in zip(a, b))
    return bool(a == b) and type(a) is type(b)


def batch_extras(n: int) -> dict[str, Any]:
    return {
        "gap": torch.linspace(0.0, 1.0, n),  # one number per input
        "segments": torch.arange(n * 20).reshape(n, 4, 5),  # one array per input
        "weights": [torch.arange(k + 2, dtype=torch.float32) for k in range(n)],  # ragged
        "mask": [torch.rand(4, 5) > 0.5 for _ in range(n)],  # same shapes: stacked
        "r2": [0.5 + k for k in range(n)],  # python floats
        "split": True,  # one value for the whole batch
        "fixed": torch.tensor([1, 2, 3]),  # one array for the whole batch (length != n)
        "notes": {"why": "kept as JSON"},
    }


@pytest.mark.parametrize("n", [1, 2])
def test_save_load_round_trip(tmp_path: Path, n: int) -> None:
    exp = made(n, batch_extras(n))
    back = Explanation.load(exp.save(tmp_path / "e.npz"))
    assert torch.equal(back.attributions, exp.attributions)
    assert torch.equal(back.targets, exp.targets) and torch.allclose(back.scores, exp.scores)
    assert (back.method, back.layer, back.params) == ("made_up", "features", {"steps": 8})
    assert back.signed is True and back.class_names == NAMES
    assert back.target_name(n - 1) == exp.target_name(n - 1)
    assert set(back.extras) == set(exp.extras)
    for name, value in exp.extras.items():
        assert same(value, back.extras[name]), name


def test_unsigned_and_nameless_round_trip(tmp_path: Path) -> None:
    exp = made(1, {}, signed=False)
    exp.class_names = None
    back = Explanation.load(exp.save(tmp_path / "e.npz"))
    assert back.signed is False and back.class_names is None and back.extras == {}
    assert back.target_name() == "0"


def test_npz_keys_of_a_single_input(tmp_path: Path) -> None:
    with np.load(made(1, batch_extras(1)).save(tmp_path / "e.npz")) as f:
        assert f["extra_segments"].shape == (4, 5)  # no batch axis, like attribution
        assert f["extra_weights"].shape == (2,) and f["extra_mask"].dtype == bool
        assert float(f["extra_gap"]) == 0.0 and bool(f["extra_split"])
        assert list(f["class_names"]) == NAMES and bool(f["signed"])


def test_npz_keys_of_a_ragged_batch(tmp_path: Path) -> None:
    with np.load(made(2, batch_extras(2)).save(tmp_path / "e.npz")) as f:
        assert f["extra_segments"].shape == (2, 4, 5) and f["extra_mask"].shape == (2, 4, 5)
        assert f["extra_weights_0"].shape == (2,) and f["extra_weights_1"].shape == (3,)


def test_files_from_before_extras_still_load(tmp_path: Path) -> None:
    path = tmp_path / "old.npz"
    np.savez(
        path,
        attribution=np.zeros((4, 5), np.float32),
        target=np.asarray(1),
        score=np.asarray(0.5, np.float32),
        method=np.asarray("gradcam"),
        layer=np.asarray(""),
        class_name=np.asarray("dog"),
        params=np.asarray("{}"),
    )
    back = Explanation.load(path)
    assert back.extras == {} and back.signed is False and back.class_names is None


def test_indexing_keeps_per_input_extras_and_zero_d_tensors() -> None:
    exp = made(2, {**batch_extras(2), "total": torch.tensor(3.0)})
    one = exp[1]
    assert one.extras["weights"][0].shape == (3,) and one.extras["segments"].shape == (1, 4, 5)
    assert float(one.extras["total"]) == 3.0  # a 0-d tensor is not per input
    assert one.extra("r2") == 1.5 and exp.extra("split", 1) is True
    with pytest.raises(KeyError, match="no extra 'nope'; it has: fixed, gap"):
        exp.extra("nope")


def test_small_extras_are_json_ready() -> None:
    exp = made(2, {**batch_extras(2), "bad": torch.tensor([float("nan"), 1.0, 2.0])})
    small = exp.small_extras(1)
    assert small["gap"] == pytest.approx(1.0) and small["r2"] == 1.5 and small["split"] is True
    assert small["weights"] == [0.0, 1.0, 2.0] and small["fixed"] == [1, 2, 3]
    assert "segments" not in small and "mask" not in small  # 20 values: left to the .npz
    assert small["bad"] == [None, 1.0, 2.0]  # valid JSON: no NaN
    assert extras_summary(exp[0])["extra_arrays"] == ["extra_segments", "extra_mask", "extra_notes"]


def test_method_extras_reach_the_npz(tmp_path: Path, images: torch.Tensor) -> None:
    """The extras that only the Python API had: IG's completeness gap, LIME's superpixels."""
    model = tiny_loaded()
    ig = create("integrated_gradients", model, steps=8).explain(images[:1])
    with np.load(ig.save(tmp_path / "ig.npz")) as f:
        assert float(f["extra_completeness_gap"]) == pytest.approx(float(ig.extras["completeness_gap"][0]))
    assert extras_summary(ig)["extras"]["completeness_gap"] >= 0
    lime = create("lime", model, n_samples=64, n_segments=16, top_k=3).explain(images[:1])
    back = Explanation.load(lime.save(tmp_path / "lime.npz"))
    assert torch.equal(back.extras["segments"], lime.extras["segments"])
    assert torch.equal(back.extras["weights"][0], lime.extras["weights"][0])
    assert torch.equal(back.extras["top_mask"][0], lime.extras["top_mask"][0])
    assert back.extras["r2"][0] == lime.extras["r2"][0]
    summary = extras_summary(lime)
    assert {"intercept", "r2"} <= set(summary["extras"])
    assert {"extra_segments", "extra_top_mask"} <= set(summary["extra_arrays"])


def test_render_mask_darkens_outside_the_mask() -> None:
    mask = torch.zeros(4, 6, dtype=torch.bool)
    mask[:, :3] = True  # the left half
    exp = made(1, {"top_mask": [mask]})
    image = Image.new("RGB", (60, 40), (200, 100, 50))
    out = np.asarray(exp.render_mask(image, dim=0.5)).astype(int)
    assert out.shape == (40, 60, 3)
    assert tuple(out[20, 10]) == (200, 100, 50) and tuple(out[20, 50]) == (100, 50, 25)
    with pytest.raises(ValueError, match=r"extra 'fixed' of made_up is shape \(3,\), expected an \(H, W\)"):
        made(1, {"fixed": torch.tensor([1, 2, 3])}).render_mask(image, "fixed")
    with pytest.raises(KeyError, match="no extra 'top_mask'"):
        made(1, {}).render_mask(image)
