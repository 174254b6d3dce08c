"""Process-wide runtime settings."""

from __future__ import annotations

import sys

import pytest

import cnnlens
from cnnlens.runtime import tune_allocator


def test_tune_allocator_can_be_switched_off(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CNNLENS_MALLOC_TUNING", "0")
    assert tune_allocator() is False


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's mallopt")
def test_tune_allocator_applies_on_glibc(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("CNNLENS_MALLOC_TUNING", raising=False)
    assert cnnlens.tune_allocator() is True  # exported for library users, as the CLI applies it
