"""The shared checks of user-given settings (cnnlens.validation)."""

from __future__ import annotations

import numpy as np
import pytest

from cnnlens.validation import check_fraction, check_int, check_int_at_least, check_positive_int, check_real


@pytest.mark.parametrize("value", [1, 7, np.int64(3)])
def test_positive_int_accepts_integers_of_at_least_one(value: object) -> None:
    out = check_positive_int("steps", value)
    assert out == value and type(out) is int


@pytest.mark.parametrize(
    ("value", "given"),
    [
        (0, "got 0$"),
        (-3, "got -3$"),
        (2.5, r"got 2\.5 \(float\)$"),
        (8.0, r"got 8\.0 \(float\); use 8$"),
        (True, r"got True \(bool\)$"),
        ("4", r"got '4' \(str\); pass a number, not a string$"),
        (None, r"got None \(NoneType\)$"),
    ],
)
def test_positive_int_says_what_was_given_and_expected(value: object, given: str) -> None:
    with pytest.raises(ValueError, match=f"^steps must be a positive integer, {given}"):
        check_positive_int("steps", value)


def test_int_at_least_names_its_bound() -> None:
    assert check_int_at_least("--errors", 0, 0) == 0
    assert check_int_at_least("max_permutations", 2, 2) == 2
    with pytest.raises(ValueError, match=r"^--errors must be an integer of at least 0, got -1$"):
        check_int_at_least("--errors", -1, 0)
    with pytest.raises(ValueError, match=r"^max_permutations must be an integer of at least 2, got 1$"):
        check_int_at_least("max_permutations", 1, 2)


def test_int_and_real_reject_the_wrong_type() -> None:
    assert check_int("window", 8) == 8
    assert check_real("sigma", 2) == 2.0
    with pytest.raises(TypeError, match=r"window must be an integer, got 8\.0 \(float\); use 8"):
        check_int("window", 8.0)
    with pytest.raises(TypeError, match=r"sigma must be a number, got '2' \(str\)"):
        check_real("sigma", "2")


def test_fraction_lies_strictly_between_zero_and_one() -> None:
    assert check_fraction("fraction", 0.25) == 0.25
    for bad, given in [
        (0, "0"),
        (1, "1"),
        (1.5, r"1\.5"),
        ("0.5", r"'0\.5' \(str\)"),
        (True, r"True \(bool\)"),
    ]:
        with pytest.raises(ValueError, match=rf"^fraction must be a fraction in \(0, 1\), got {given}"):
            check_fraction("fraction", bad)
