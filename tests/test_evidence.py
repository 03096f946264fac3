"""The seed convention, the paired verdict and the ledger binding (refimpl.evidence)."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy.stats import t as student_t
from scipy.stats import ttest_rel

from refimpl import evidence
from refimpl.evidence import (
    ClaimFailed,
    VerdictChanged,
    claim,
    paired_comparison,
    paired_verdict,
    seeds,
)


def test_cutoff_table_matches_scipy():
    for n, cutoff in evidence.T_CUTOFF_95.items():
        assert cutoff == round(float(student_t.ppf(0.975, n - 1)), 3), n


def test_bonferroni_cutoff_is_the_quantile_at_alpha_over_family():
    assert evidence.t_cutoff(12, family=12) == pytest.approx(student_t.ppf(1 - 0.025 / 12, 11))
    assert evidence.t_cutoff(12, family=12) > evidence.t_cutoff(12)


def test_seeds_move_with_the_offset(monkeypatch):
    monkeypatch.delenv(evidence.SEED_OFFSET_VARIABLE, raising=False)
    assert seeds(3) == [0, 1, 2]
    assert seeds(2, start=10) == [10, 11]
    monkeypatch.setenv(evidence.SEED_OFFSET_VARIABLE, "7")
    assert seeds(3) == [7, 8, 9]
    assert seeds(2, start=10) == [17, 18]


@pytest.mark.parametrize("raw", ["x", "1.5", "-3"])
def test_a_bad_offset_is_an_error(monkeypatch, raw):
    monkeypatch.setenv(evidence.SEED_OFFSET_VARIABLE, raw)
    with pytest.raises(ValueError, match="REFIMPL_SEED_OFFSET"):
        seeds(2)


def test_t_agrees_with_scipys_paired_test():
    rng = np.random.default_rng(0)
    a, b = rng.normal(size=7), rng.normal(size=7)
    r = paired_comparison(a, b)
    assert r.t == pytest.approx(ttest_rel(a, b).statistic)
    assert r.stderr == pytest.approx(np.std(a - b, ddof=1) / math.sqrt(7))


def test_lower_is_better_flips_the_winner():
    loss_a, loss_b = [0.1, 0.2, 0.15, 0.1], [0.5, 0.6, 0.7, 0.55]
    assert paired_comparison(loss_a, loss_b, ("A", "B")).verdict == "B better"
    r = paired_comparison(loss_a, loss_b, ("A", "B"), lower_is_better=True, better="faster")
    assert r.verdict == "A faster"


def test_non_finite_results_are_refused():
    with pytest.raises(ValueError, match="finite"):
        paired_comparison([1.0, float("nan")], [0.0, 0.0])


def test_paired_verdict_prints_and_asserts(capsys):
    r = paired_verdict("x", [1, 2, 3.1], [0, 1, 2], ("A", "B"), expect="A better")
    assert r.verdict == "A better"
    out = capsys.readouterr().out
    assert "t_paired = +" in out and "cutoff 4.303" in out and out.rstrip().endswith("A better")
    with pytest.raises(VerdictChanged, match="the book states 'B better'"):
        paired_verdict("x", [1, 2, 3.1], [0, 1, 2], ("A", "B"), expect="B better")


def test_a_weaker_claim_accepts_either_verdict():
    noisy = ([1.0, 0.0, 1.0], [0.0, 1.0, 0.5])
    paired_verdict("x", *noisy, ("A", "B"), expect=("A better", "difference not shown"))
    with pytest.raises(VerdictChanged):
        paired_verdict("x", *noisy, ("A", "B"), expect=("A better",))


def test_expect_must_be_a_possible_verdict():
    with pytest.raises(ValueError, match="expect"):
        paired_verdict("x", [1, 2], [0, 1], ("A", "B"), expect="A faster")


def test_claim_checks_types_and_truth(capsys):
    claim("row", "half right", {"one": True, "two": np.bool_(True)})
    assert capsys.readouterr().out.splitlines()[0] == "ledger row row: half right"
    with pytest.raises(ClaimFailed, match="two"):
        claim("row", "holds", {"one": True, "two": False})
    with pytest.raises(TypeError):
        claim("row", "holds", {"an object is not a bool": paired_comparison([1, 2], [0, 0])})
    with pytest.raises(ValueError):
        claim("row", "holds", {})
    with pytest.raises(ValueError):
        claim("row", "true", {"x": True})
