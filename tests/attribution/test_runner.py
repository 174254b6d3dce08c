"""The pass runner: every method over every backend x precision x memory format, callable targets,
and the settings' errors."""

from __future__ import annotations

import itertools

import pytest
import torch

from cnnlens import capabilities
from cnnlens.attribution import create, get_method, method_names
from cnnlens.attribution.core.base import RUN_SETTINGS
from cnnlens.attribution.engine.runner import PassRunner, target_scores
from cnnlens.errors import BackendError
from tests.attribution.test_contract import assert_same, model_for, small, snapshot
from tests.conftest import tiny_loaded

#: The methods that forward the runner's settings (the others run fp32 on the model itself).
WITH_SETTINGS = [m for m in method_names() if "backend" in get_method(m).hyperparameters()]
COMBOS = list(itertools.product(("eager", "fused"), ("fp32", "bf16"), ("channels_last", "contiguous")))


def test_the_settings_are_declared_once_and_offered_by_the_methods_that_run_passes() -> None:
    assert len(WITH_SETTINGS) >= 14
    for name in method_names():
        params = get_method(name).hyperparameters()
        offered = [k for k in RUN_SETTINGS if k in params]
        assert offered in ([], list(RUN_SETTINGS)), name  # all three or none
        if offered:
            assert {params[k].default for k in RUN_SETTINGS} == {"auto"}, name  # one default
    assert "precision" not in get_method("cam").hyperparameters()  # CAM reads the head's weights


@pytest.mark.parametrize(("backend", "precision", "layout"), COMBOS)
@pytest.mark.parametrize("name", WITH_SETTINGS)
def test_every_method_over_every_backend_precision_and_layout(
    name: str, backend: str, precision: str, layout: str, images: torch.Tensor
) -> None:
    if backend == "fused" and not capabilities.available("fused_conv"):
        pytest.skip(f"needs capability fused_conv ({capabilities.probe('fused_conv').reason})")
    if precision == "bf16" and not capabilities.available("bf16_autocast"):
        pytest.skip(f"needs capability bf16_autocast ({capabilities.probe('bf16_autocast').reason})")
    model = model_for(name)
    reference = create(
        name, model, precision="fp32", backend="eager", memory_format="contiguous", **small(name)
    )
    ref = reference.explain(images)
    before = snapshot(model.module)
    method = create(name, model, precision=precision, backend=backend, memory_format=layout, **small(name))
    exp = method.explain(images)
    assert_same(before, snapshot(model.module))
    assert exp.attributions.shape == ref.attributions.shape and torch.isfinite(exp.attributions).all()
    assert torch.equal(exp.targets, ref.targets)  # targets always come from float32 logits
    assert exp.params["computed_in"] == precision
    assert exp.params.get("backend_used", backend) == backend  # the inference passes ran on it
    if precision == "fp32":
        torch.testing.assert_close(exp.attributions, ref.attributions, rtol=1e-3, atol=1e-4)
    elif name != "double_occlusion":  # its fixed window is chosen by an argmax: bf16 can flip it
        a, b = exp.attributions.flatten(), ref.attributions.flatten()
        if float(b.std()) > 0:
            assert float(torch.corrcoef(torch.stack([a, b]))[0, 1]) > 0.9


def test_backend_errors_and_record(images: torch.Tensor) -> None:
    model = tiny_loaded()
    with pytest.raises(ValueError, match="backend must be one of auto, eager, fused, got 'jit'"):
        create("occlusion", model, backend="jit")
    eager = create("occlusion", model, window=8, stride=8, backend="eager").explain(images)
    assert eager.params["backend_used"] == "eager"
    with capabilities.disabled("fused_conv"):
        with pytest.raises(BackendError, match="backend 'fused' cannot run on this CPU"):
            create("occlusion", model, backend="fused").explain(images)
        auto = create("occlusion", model, window=8, stride=8, backend="auto").explain(images)
    assert auto.params["backend_used"] == "eager"  # auto falls back to the model itself
    torch.testing.assert_close(auto.attributions, eager.attributions)
    assert "backend_used" not in create("saliency", model).explain(images).params  # no inference pass


@pytest.mark.parametrize("name", ["gradxinput", "integrated_gradients", "occlusion", "layer_gradxact"])
def test_a_target_function_is_explained_like_any_score(name: str, images: torch.Tensor) -> None:
    """These maps are linear in the explained score, so a difference of two logits gives the
    difference of the two classes' maps (a closed form); a function picking one logit gives that
    class's map."""
    model = tiny_loaded()
    params = small(name) | ({"score": "logit"} if "score" in get_method(name).hyperparameters() else {})
    one = create(name, model, **params).explain(images, target=1).attributions
    zero = create(name, model, **params).explain(images, target=0).attributions

    def margin(logits: torch.Tensor) -> torch.Tensor:
        return logits[:, 1] - logits[:, 0]

    exp = create(name, model, **params).explain(images, target=margin)
    torch.testing.assert_close(exp.attributions, one - zero, rtol=1e-4, atol=1e-5)
    picked = create(name, model, **params).explain(images, target=lambda z: z[:, 1]).attributions
    torch.testing.assert_close(picked, one, rtol=1e-5, atol=1e-6)
    assert exp.params["target_function"] == "margin"
    torch.testing.assert_close(exp.extras["objective"], margin(model.logits(images)), rtol=1e-5, atol=1e-5)
    assert exp.targets.tolist() == model.logits(images).argmax(1).tolist()  # reported: the top class


def test_target_functions_that_cannot_be_explained(images: torch.Tensor) -> None:
    model = tiny_loaded()
    with pytest.raises(ValueError, match="'cam' explains a class, not a function of the logits"):
        create("cam", model).explain(images, target=lambda z: z[:, 0])
    with pytest.raises(ValueError, match=r"must map \(N, K\) logits to \(N,\) scores, got \(3, 3\)"):
        create("saliency", model).explain(images, target=lambda z: z)


def test_target_scores_closed_form() -> None:
    logits = torch.tensor([[1.0, 2.0, 3.0], [0.0, 0.0, 0.0]])
    targets = torch.tensor([2, 0])
    assert target_scores(logits, targets).tolist() == [3.0, 0.0]
    probs = target_scores(logits, targets, "probability")
    torch.testing.assert_close(probs, torch.tensor([1 / (1 + torch.e**-1 + torch.e**-2), 1 / 3]))
    assert target_scores(logits, targets, objective=lambda z: z.sum(1)).tolist() == [6.0, 0.0]


def test_runner_resolves_its_settings_once() -> None:
    module = tiny_loaded().module
    cpu = torch.device("cpu")
    runner = PassRunner(module, cpu, precision="auto", memory_format="auto", bf16_faithful=False)
    assert runner.precision == "fp32" and runner.record() == {"computed_in": "fp32"}
    assert runner.layout(gradients=True) == "contiguous" and runner.layout(gradients=False) == "channels_last"
    with pytest.raises(ValueError, match="memory_format must be one of"):
        PassRunner(module, cpu, memory_format="nhwc")
    with pytest.raises(ValueError, match="precision must be one of"):
        PassRunner(module, cpu, precision="fp16")
