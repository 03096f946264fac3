"""check_table: one table for a run of comparisons, same pass/fail rule as check."""

import numpy as np
import pytest

from refimpl.check import ToleranceExceeded, check_table


def test_prints_one_row_per_comparison_and_the_tolerance(capsys):
    zeros = np.zeros((2, 3))
    check_table([("a", np.ones(2), np.ones(2)), ("longer name", zeros, zeros)])
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].split() == ["comparison", "shape", "agree", "within", "1e-12"]
    assert lines[1].split() == ["a", "(2,)", "ok"]
    assert lines[2].split() == ["longer", "name", "(2,", "3)", "ok"]
    assert len({line.index("(") for line in lines[1:]}) == 1     # shapes in one column


def test_prints_the_whole_table_then_raises_on_the_failing_row(capsys):
    with pytest.raises(ToleranceExceeded, match="bad"):
        check_table([("bad", np.array([1.0]), np.array([1.1])), ("good", 1.0, 1.0)])
    out = capsys.readouterr().out
    assert "FAIL" in out and out.rstrip().endswith("ok")


def test_absolute_tolerance_is_stated_and_used(capsys):
    check_table([("near zero", np.array([1e-9]), np.array([0.0]))], atol=1e-8)
    assert "1.0e-08 absolute" in capsys.readouterr().out
