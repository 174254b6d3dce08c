"""Property-based tests (issue 16): the image decoder and the parameter parser on arbitrary input.

Whatever bytes a file holds, :func:`cnnlens.data.images.load_image` returns an RGB image or raises
:class:`~cnnlens.errors.CnnlensError` naming the file (the command line turns that into one line and
goes on with the other images); whatever ``-p KEY=VALUE`` text a user types, the parser and the
method checks give a value or an :class:`~cnnlens.errors.InputError`, never another exception.
"""

from __future__ import annotations

import io
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

import numpy as np
import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from PIL import Image

from cnnlens.attribution.core.registry import get_method
from cnnlens.cli.common import build_methods, parse_params
from cnnlens.data.images import load_image
from cnnlens.errors import CnnlensError
from cnnlens.models import LoadedModel, load_model

T = TypeVar("T")
FUZZ = settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])


def encoded(fmt: str, **kwargs: object) -> bytes:
    rng = np.random.default_rng(0)
    im = Image.fromarray(rng.integers(0, 255, (12, 16, 3), dtype=np.uint8))
    buf = io.BytesIO()
    im.save(buf, format=fmt, **kwargs)
    return buf.getvalue()


VALID = {fmt: encoded(fmt) for fmt in ("PNG", "JPEG", "GIF", "BMP", "TIFF", "WEBP")}


def outcome(call: Callable[[], T]) -> tuple[T | None, str]:
    """``(result, "")``, or ``(None, message)`` when ``call`` raises a :class:`CnnlensError` (any
    other exception propagates and fails the test)."""
    try:
        return call(), ""
    except CnnlensError as err:
        return None, str(err)


def check_decodes_or_refuses(path: Path, data: bytes) -> None:
    path.write_bytes(data)
    im, error = outcome(lambda: load_image(path, max_pixels=1_000_000))
    if im is None:
        assert str(path) in error and "\n" not in error
    else:
        assert im.mode == "RGB" and im.width * im.height <= 1_000_000
        np.asarray(im)  # the pixels are there


@pytest.fixture(scope="module")
def folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("fuzz")


@FUZZ
@given(data=st.binary(max_size=2048))
def test_arbitrary_bytes(folder: Path, data: bytes) -> None:
    check_decodes_or_refuses(folder / "any.png", data)


@st.composite
def mutated(draw: st.DrawFn) -> bytes:
    """A valid PNG/JPEG/GIF/BMP/TIFF/WebP with bytes overwritten, cut off, inserted or removed."""
    data = bytearray(VALID[draw(st.sampled_from(sorted(VALID)))])
    for _ in range(draw(st.integers(1, 6))):
        at = draw(st.integers(0, max(len(data) - 1, 0)))
        kind = draw(st.sampled_from(["set", "cut", "insert", "delete"]))
        if kind == "set" and data:
            data[at] = draw(st.integers(0, 255))
        elif kind == "cut":
            del data[at:]
        elif kind == "insert":
            data[at:at] = draw(st.binary(min_size=1, max_size=16))
        elif data:
            del data[at : at + draw(st.integers(1, 16))]
    return bytes(data)


@FUZZ
@given(data=mutated())
def test_mutated_images(folder: Path, data: bytes) -> None:
    check_decodes_or_refuses(folder / "mutated.img", data)


def test_the_mutations_reach_past_the_header(folder: Path) -> None:
    """The valid files decode (so a mutation is what makes a case fail, not the file)."""
    for fmt, data in VALID.items():
        check_decodes_or_refuses(folder / f"valid.{fmt.lower()}", data)
        assert load_image(folder / f"valid.{fmt.lower()}").size == (16, 12)


@settings(max_examples=300, deadline=None)
@given(pairs=st.lists(st.text(max_size=40), max_size=4))
def test_parse_params_on_any_text(pairs: list[str]) -> None:
    params, error = outcome(lambda: parse_params(pairs))
    if params is None:
        assert "KEY=VALUE" in error
    else:
        assert set(params) <= {p.partition("=")[0].strip() for p in pairs}


@settings(max_examples=200, deadline=None)
@given(text=st.text(alphabet="[](){}:,.'\"0123456789-+ejnaTFN ", max_size=30))
@example(text="{[]: 1}")  # literal_eval raised TypeError (unhashable), a traceback
@example(text="{{}}")
@example(text="(" * 200 + ")" * 200)
def test_parse_params_on_literal_like_values(text: str) -> None:
    assert "k" in parse_params([f"k={text}"])  # a value, whatever literal_eval makes of it


@pytest.fixture(scope="module")
def tiny_model() -> LoadedModel:
    return load_model("tinycnn", pretrained=False)


METHODS = ["occlusion", "smoothgrad", "integrated_gradients", "rise", "lime", "gradcam", "kernelshap"]
VALUES = st.one_of(
    st.integers(-(2**40), 2**40).map(str),
    st.sampled_from(["0", "-1", "1e999", "-1e999", "nan", "inf", "True", "None", "[]", "[0, 0]", "(1,)"]),
    st.floats(allow_nan=False, allow_infinity=False, width=32).map(repr),
    st.text(alphabet="abcxyz_-.[]0123456789", max_size=8),
)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_method_parameters_are_a_method_or_one_input_error(
    tiny_model: LoadedModel, data: st.DataObject
) -> None:
    name = data.draw(st.sampled_from(METHODS))
    keys = sorted(get_method(name).hyperparameters())
    key = data.draw(st.sampled_from(keys))
    pair = f"{key}={data.draw(VALUES)}"
    methods, error = outcome(lambda: build_methods(tiny_model, [name], parse_params([pair]), None))
    if methods is None:
        assert error and "\n" not in error
    else:
        assert [m.name for m in methods] == [name]
