"""refimpl.check: the one-line comparison every notebook prints."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from refimpl.check import (
    ToleranceExceeded,
    check,
    error_bound,
    max_relative_error,
    power_of_ten_ceiling,
)


@pytest.mark.parametrize(
    ("x", "text"),
    [
        (0.0, "0"),
        (1e-16, "1e-16"),
        (2.2e-16, "1e-15"),
        (0.5, "1e00"),
        (3.0, "1e01"),
        (math.inf, "inf"),
    ],
)
def test_error_is_rounded_up_to_its_power_of_ten(x, text):
    assert power_of_ten_ceiling(x) == text


def test_relative_error_is_normwise():
    ref = np.array([0.0, 2.0, -4.0])
    assert max_relative_error(ref + [0.0, 0.0, 0.4], ref) == pytest.approx(0.1)


def test_passing_check_prints_one_line_and_returns_nothing(capsys):
    a = torch.tensor([1.0, 2.0], dtype=torch.float64)
    assert check("same", a, a.numpy()) is None
    out = capsys.readouterr().out
    assert out == "ok   same: agree within 1e-12, shape (2,)\n"


def test_passing_line_does_not_depend_on_the_observed_round_off(capsys):
    # One CPU path rounds to 0, another to 1e-16: the printed line must be the same.
    ref = np.array([1.0, 2.0])
    check("x", ref, ref)
    check("x", ref * (1 + 2.0**-52), ref)
    first, second = capsys.readouterr().out.splitlines()
    assert first == second == "ok   x: agree within 1e-12, shape (2,)"


def test_atol_is_stated(capsys):
    check("a", np.array([1e-7]), np.array([0.0]), tol=1e-6, atol=1e-6)
    assert capsys.readouterr().out == "ok   a: agree within 1e-06 + 1.0e-06 absolute, shape (1,)\n"


@pytest.mark.parametrize(
    ("x", "floor", "text"),
    [(0.0, 1e-12, "<= 1e-12"), (3e-16, 1e-12, "<= 1e-12"), (2e-6, 1e-12, "<= 1e-05"),
     (1e-12, 1e-12, "<= 1e-12"), (math.nan, 1e-12, "nan")],
)
def test_error_bound_hides_round_off_below_its_floor(x, floor, text):
    assert error_bound(x, floor) == text


def test_failing_check_raises_and_says_fail(capsys):
    with pytest.raises(ToleranceExceeded, match="exceeds"):
        check("off", np.array([1.0, 2.001]), np.array([1.0, 2.0]), tol=1e-6)
    out = capsys.readouterr().out
    assert out.startswith("FAIL off: relative error 5.000e-04, not within 1e-06")


def test_atol_widens_the_bound():
    check("within atol", np.array([1e-7]), np.array([0.0]), tol=0.0, atol=1e-6)
    with pytest.raises(ToleranceExceeded):
        check("beyond atol", np.array([1e-5]), np.array([0.0]), tol=0.0, atol=1e-6)


def test_shape_mismatch_raises():
    with pytest.raises(ToleranceExceeded, match="shape"):
        check("shapes", np.zeros(3), np.zeros((3, 1)))


def test_nan_must_match_nan():
    check("nan in both", np.array([np.nan, 1.0]), np.array([np.nan, 1.0]))
    with pytest.raises(ToleranceExceeded):
        check("nan in one", np.array([np.nan, 1.0]), np.array([0.0, 1.0]))
