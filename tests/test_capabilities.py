"""Capability probes: each fast path is found by running its op, can be switched off, and every
path has a fallback that runs where the fast one cannot."""

from __future__ import annotations

import logging

import pytest
import torch

from cnnlens import capabilities
from cnnlens.attribution import create
from cnnlens.attribution.engine.fused import fused_network, inference_pass
from cnnlens.attribution.engine.precision import resolve_precision
from cnnlens.errors import PrecisionError
from tests.conftest import requires, tiny_loaded

CPU = torch.device("cpu")


@pytest.fixture
def images() -> torch.Tensor:
    torch.manual_seed(0)
    return torch.rand(2, 3, 16, 16)


def test_every_capability_is_probed_and_reported() -> None:
    found = capabilities.report(CPU)
    assert set(found) == set(capabilities.CAPABILITIES)
    for probe in found.values():
        assert probe.available or probe.reason  # a missing one always says why
    with pytest.raises(ValueError, match="unknown capability 'avx9'"):
        capabilities.probe("avx9")
    with pytest.raises(ValueError, match="unknown capability"), capabilities.disabled("avx9"):
        pass


def test_a_probe_whose_op_fails_reports_the_error_once(monkeypatch: pytest.MonkeyPatch) -> None:
    calls = []
    monkeypatch.delenv(capabilities.ENV_DISABLE, raising=False)

    def broken(device: torch.device) -> None:
        calls.append(device)
        raise RuntimeError("mkldnn_convolution: bf16 path needs the cpu support avx512bw\nmore text")

    monkeypatch.setattr(capabilities, "_CACHE", {})
    monkeypatch.setitem(capabilities._PROBES, "bf16_native", broken)
    for _ in range(3):
        probe = capabilities.probe("bf16_native", CPU)
    assert not probe.available and len(calls) == 1  # cached
    assert probe.reason == "RuntimeError: mkldnn_convolution: bf16 path needs the cpu support avx512bw"


def test_a_probe_with_wrong_numbers_fails() -> None:
    with pytest.raises(RuntimeError, match="wrong result"):
        capabilities._close(torch.ones(3), torch.zeros(3), 1e-5)
    with pytest.raises(RuntimeError, match="wrong result"):
        capabilities._close(torch.tensor([float("nan")]), torch.zeros(1), 1e-5)


def test_switched_off_by_context_and_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    with capabilities.disabled("fused_conv"):
        assert not capabilities.available("fused_conv")
        assert "switched off" in capabilities.probe("fused_conv").reason
    monkeypatch.setenv(capabilities.ENV_DISABLE, "bf16_native, fused_conv_bf16")
    assert not capabilities.available("bf16_native") and not capabilities.available("fused_conv_bf16")
    monkeypatch.setenv(capabilities.ENV_DISABLE, "all")
    assert not any(p.available for p in capabilities.report().values())


@requires("bf16_autocast")
def test_without_native_bf16_auto_is_fp32_and_bf16_runs_emulated_on_the_eager_model(
    images: torch.Tensor, caplog: pytest.LogCaptureFixture
) -> None:
    model = tiny_loaded()
    fp32 = create("occlusion", model, window=8, stride=8, precision="fp32").explain(images)
    with capabilities.disabled("bf16_native"), caplog.at_level(logging.WARNING):
        assert resolve_precision("auto", CPU, True) == "fp32"
        assert resolve_precision("bf16", CPU, True) == "bf16"
        with torch.inference_mode():
            assert fused_network(model.module, images, "bf16") is None  # autocast on the eager model
            fp32_net = fused_network(model.module, images, "fp32")
        assert fp32_net is not None or not capabilities.available("fused_conv")
        bf16 = create("occlusion", model, window=8, stride=8, precision="bf16").explain(images)
        auto = create("occlusion", model, window=8, stride=8, precision="auto").explain(images)
    assert bf16.params["computed_in"] == "bf16" and auto.params["computed_in"] == "fp32"
    assert bf16.params["bf16_kernels"] == "emulated" and "bf16_kernels" not in auto.params
    assert torch.equal(auto.attributions, fp32.attributions)
    corr = torch.corrcoef(torch.stack([fp32.attributions.flatten(), bf16.attributions.flatten()]))[0, 1]
    assert corr > 0.9
    assert not torch.equal(bf16.attributions, fp32.attributions)  # it did run in bf16


def test_without_any_bf16_an_explicit_request_stops_with_one_clear_line(images: torch.Tensor) -> None:
    model = tiny_loaded()
    with capabilities.disabled("bf16_native", "bf16_autocast"):
        assert resolve_precision("auto", CPU, True) == "fp32"
        with pytest.raises(PrecisionError, match="use precision 'fp32', or 'auto'"):
            resolve_precision("bf16", CPU, True)
        with pytest.raises(PrecisionError, match="cannot run on this cpu"):
            create("saliency", model, precision="bf16")  # at construction, not mid-run
        auto = create("rise", model, n_masks=8, precision="auto").explain(images)
    assert auto.params["computed_in"] == "fp32"


def test_without_the_fused_kernel_passes_run_eagerly_with_the_same_numbers(images: torch.Tensor) -> None:
    model = tiny_loaded()
    fused = create("occlusion", model, window=8, stride=8, precision="fp32").explain(images)
    with capabilities.disabled("fused_conv"), torch.inference_mode():
        assert fused_network(model.module, images, "fp32") is None
        eager = inference_pass(model.module, images, "fp32", None)
    with capabilities.disabled("fused_conv"):
        plain = create("occlusion", model, window=8, stride=8, precision="fp32").explain(images)
    torch.testing.assert_close(plain.attributions, fused.attributions, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(eager, model.module(images).detach(), rtol=1e-5, atol=1e-5)


def test_the_cli_says_in_one_line_that_bf16_cannot_run(
    tmp_path: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from cnnlens.cli import main

    monkeypatch.setenv(capabilities.ENV_DISABLE, "bf16_native,bf16_autocast")
    code = main(
        [
            "explain",
            "--model",
            "tinycnn",
            "--method",
            "occlusion",
            "--precision",
            "bf16",
            "x.png",
            "--out",
            str(tmp_path),
        ]
    )
    err = capsys.readouterr().err
    assert code == 2
    assert "precision 'bf16' cannot run on this cpu" in " ".join(err.split())
    assert "Traceback" not in err
