"""refimpl.check: the one-line comparison every notebook prints."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from refimpl.check import ToleranceExceeded, check, max_relative_error, power_of_ten_ceiling


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
    assert out == "ok   same: rel err <= 0 (tol 1e-12), shape (2,)\n"


def test_failing_check_raises_and_says_fail(capsys):
    with pytest.raises(ToleranceExceeded, match="exceeds"):
        check("off", np.array([1.0, 2.001]), np.array([1.0, 2.0]), tol=1e-6)
    assert capsys.readouterr().out.startswith("FAIL off: rel err <= 1e-03")


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
