"""The book's evidence standard: one seed convention, one paired verdict, one ledger binding.

Seeds. Every experiment draws its seeds from :func:`seeds`, which honours the environment
variable ``REFIMPL_SEED_OFFSET`` (default 0). CI runs every notebook twice, the second time
with a non-zero offset, so a verdict must hold for seeds nobody chose. Fixed worked examples
(a demo tensor, the N=2, C=3, H=2, W=3 batch) keep their own fixed seed and do not move.
A seed is a seed, never an index: loop over ``enumerate(seeds(n))`` when you need both.

Paired verdicts. :func:`paired_verdict` computes the mean of paired per-seed differences
against the two-sided 5% Student t cutoff with n - 1 degrees of freedom, prints it in one
wording everywhere, and raises :class:`VerdictChanged` when the verdict is not the one the
text states. Fix the number of seeds before running; never add seeds because t is close.

Ledger rows. :func:`claim` asserts the named checks behind one row of the claims ledger
(``book/claims.md``) and prints the row's verdict. A test binds every ledger row to the
``claim`` call with its label, in the first code cell after that label.
"""

from __future__ import annotations

import math
import os
import textwrap
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np

__all__ = [
    "SEED_OFFSET_VARIABLE",
    "LEDGER_VERDICTS",
    "NOT_SHOWN",
    "T_CUTOFF_95",
    "ClaimFailed",
    "VerdictChanged",
    "PairedComparison",
    "seed_offset",
    "seeds",
    "t_cutoff",
    "paired_comparison",
    "paired_verdict",
    "claim",
]

SEED_OFFSET_VARIABLE = "REFIMPL_SEED_OFFSET"
LEDGER_VERDICTS = ("holds", "wrong", "half right", "not shown")
NOT_SHOWN = "difference not shown"
PRINT_WIDTH = 76  # the site's code column at 1280 px

# Two-sided 5% Student t cutoffs by number of pairs n (n - 1 degrees of freedom), to three
# decimals (tests/test_evidence.py recomputes them with SciPy).
T_CUTOFF_95 = {
    2: 12.706, 3: 4.303, 4: 3.182, 5: 2.776, 6: 2.571, 7: 2.447, 8: 2.365, 9: 2.306,
    10: 2.262, 11: 2.228, 12: 2.201, 13: 2.179, 14: 2.160, 15: 2.145, 16: 2.131, 17: 2.120,
    18: 2.110, 19: 2.101, 20: 2.093, 21: 2.086, 22: 2.080, 23: 2.074, 24: 2.069, 25: 2.064,
    26: 2.060, 27: 2.056, 28: 2.052, 29: 2.048, 30: 2.045,
}  # fmt: skip


class VerdictChanged(AssertionError):
    """A paired comparison no longer gives the verdict the book states.

    >>> issubclass(VerdictChanged, AssertionError)  # a failed verdict fails like an assert
    True
    """


class ClaimFailed(AssertionError):
    """A check behind a ledger row's verdict is false.

    >>> issubclass(ClaimFailed, AssertionError)  # nbval reports it as a failed cell
    True
    """


def seed_offset() -> int:
    """The offset added to every experiment seed: ``$REFIMPL_SEED_OFFSET``, default 0.

    >>> import os
    >>> os.environ.pop("REFIMPL_SEED_OFFSET", None) and None
    >>> seed_offset()
    0
    """
    raw = os.environ.get(SEED_OFFSET_VARIABLE, "").strip()
    if not raw:
        return 0
    try:
        offset = int(raw)
    except ValueError:
        raise ValueError(f"{SEED_OFFSET_VARIABLE} must be an integer, got {raw!r}") from None
    if offset < 0:
        raise ValueError(f"{SEED_OFFSET_VARIABLE} must be >= 0, got {offset}")
    return offset


def seeds(n: int, start: int = 0) -> list[int]:
    """``n`` experiment seeds: ``start``, ``start + 1``, ... shifted by :func:`seed_offset`.

    Give independent experiments in one notebook different ``start`` values so that they do
    not reuse each other's seeds.

    >>> import os
    >>> os.environ.pop("REFIMPL_SEED_OFFSET", None) and None
    >>> seeds(3), seeds(2, start=100)
    ([0, 1, 2], [100, 101])
    >>> os.environ["REFIMPL_SEED_OFFSET"] = "1000"
    >>> seeds(3)
    [1000, 1001, 1002]
    >>> del os.environ["REFIMPL_SEED_OFFSET"]
    """
    if n < 1:
        raise ValueError(f"seeds(n) needs n >= 1, got {n}")
    if start < 0:
        raise ValueError(f"seeds(start=...) must be >= 0, got {start}")
    offset = seed_offset()
    return [offset + start + i for i in range(n)]


def t_cutoff(n: int, family: int = 1) -> float:
    """The two-sided 5% t cutoff for ``n`` pairs; with ``family`` > 1 comparisons judged
    together, the Bonferroni cutoff at 5% / family (needs SciPy).

    >>> t_cutoff(5), round(t_cutoff(12, family=12), 3)
    (2.776, 3.6)
    """
    if n < 2:
        raise ValueError("a paired comparison needs at least 2 pairs")
    if family < 1:
        raise ValueError(f"family must be >= 1, got {family}")
    if family == 1:
        if n not in T_CUTOFF_95:
            raise ValueError(f"no t cutoff stored for {n} pairs; use 2 to {max(T_CUTOFF_95)}")
        return T_CUTOFF_95[n]
    from scipy.stats import t as student_t

    return float(student_t.ppf(1 - 0.025 / family, n - 1))


@dataclass(frozen=True)
class PairedComparison:
    """Paired differences a - b, their mean, standard error, t = mean / stderr, the cutoff
    and the verdict ("<a> better", "<b> better" or "difference not shown").

    >>> r = paired_comparison([0.5, 0.75, 0.5], [0.5, 0.5, 0.75])
    >>> r.differences, r.cutoff, r.verdict
    ((0.0, 0.25, -0.25), 4.303, 'difference not shown')
    """

    differences: tuple[float, ...]
    mean: float
    stderr: float
    t: float
    cutoff: float
    verdict: str

    @property
    def n(self) -> int:
        return len(self.differences)


def paired_comparison(
    a,
    b,
    names: tuple[str, str] = ("a", "b"),
    *,
    lower_is_better: bool = False,
    better: str = "better",
    family: int = 1,
) -> PairedComparison:
    """Compare paired per-seed results ``a[i]`` and ``b[i]`` (computes, prints nothing).

    ``lower_is_better`` for losses and step counts; ``better`` is the verdict's word
    ("faster" for a speed metric); ``family`` as in :func:`t_cutoff`.

    >>> r = paired_comparison([0.90, 0.91, 0.92], [0.80, 0.80, 0.83], ("BN", "plain"))
    >>> r.verdict, round(r.mean, 3)
    ('BN better', 0.1)
    >>> paired_comparison([0.1, 0.2, 0.1], [0.5, 0.6, 0.7], ("BN", "plain"),
    ...                   lower_is_better=True, better="faster").verdict
    'BN faster'
    """
    d = np.asarray(a, dtype=float) - np.asarray(b, dtype=float)
    if d.ndim != 1:
        raise ValueError(f"paired results are one value per seed, got shape {d.shape}")
    if not np.all(np.isfinite(d)):
        raise ValueError("paired results must be finite (a diverged run needs a finite score)")
    n = len(d)
    cutoff = t_cutoff(n, family)
    mean = float(d.mean())
    stderr = float(d.std(ddof=1) / math.sqrt(n))
    t = mean / stderr if stderr > 0 else (math.copysign(math.inf, mean) if mean else 0.0)
    if abs(t) <= cutoff:
        verdict = NOT_SHOWN
    else:
        a_wins = (t > 0) != lower_is_better
        verdict = f"{names[0] if a_wins else names[1]} {better}"
    return PairedComparison(tuple(float(v) for v in d), mean, stderr, t, cutoff, verdict)


def paired_verdict(
    name: str,
    a,
    b,
    names: tuple[str, str],
    *,
    expect: str | Sequence[str],
    metric: str = "",
    lower_is_better: bool = False,
    better: str = "better",
    family: int = 1,
) -> PairedComparison:
    """Compute, print and assert one paired verdict: the book's single standard.

    ``expect`` is the verdict the text states; a tuple of verdicts states a weaker,
    one-sided claim ("A better" or "difference not shown": A is not worse). Prints the
    mean difference and t to three decimals (seed-dependent: call it in an
    ``# NBVAL_IGNORE_OUTPUT`` cell) and raises :class:`VerdictChanged` when the verdict
    is not among ``expect``.

    >>> r = paired_verdict("demo", [0.9, 0.91, 0.93], [0.8, 0.8, 0.82], ("BN", "plain"),
    ...                    expect="BN better", metric="test accuracy")
    demo: BN - plain, test accuracy, 3 paired seeds
      mean difference +0.107, t_paired = +32.000 (cutoff 4.303): BN better
    >>> try:
    ...     _ = paired_verdict("demo", [0.9, 0.8, 0.93], [0.8, 0.9, 0.82], ("BN", "plain"),
    ...                        expect="BN better")
    ... except VerdictChanged as e:
    ...     print("raised")
    demo: BN - plain, 3 paired seeds
      mean difference +0.037, t_paired = +0.536 (cutoff 4.303):
        difference not shown
    raised
    """
    expected = (expect,) if isinstance(expect, str) else tuple(expect)
    possible = {f"{names[0]} {better}", f"{names[1]} {better}", NOT_SHOWN}
    unknown = [e for e in expected if e not in possible]
    if not expected or unknown:
        raise ValueError(f"expect must be among {sorted(possible)}, got {unknown or expect!r}")
    r = paired_comparison(
        a, b, names, lower_is_better=lower_is_better, better=better, family=family
    )
    what = f", {metric}" if metric else ""
    direction = ", lower is better" if lower_is_better else ""
    family_note = f", Bonferroni over {family} tests" if family > 1 else ""
    # wrapped to the site's code column (76 characters), continuation lines indented
    header = f"{name}: {names[0]} - {names[1]}{what}{direction}, {r.n} paired seeds{family_note}"
    result = (
        f"mean difference {r.mean:+.3f}, t_paired = {r.t:+.3f} "
        f"(cutoff {r.cutoff:.3f}): {_unbreakable(r.verdict)}"
    )
    print(_wrap(header, first=""))
    print(_wrap(result, first="  "))
    if r.verdict not in expected:
        raise VerdictChanged(
            f"{name}: the verdict is {r.verdict!r}, the book states {' or '.join(expected)!r} "
            f"(t_paired = {r.t:+.3f}, cutoff {r.cutoff:.3f}, {r.n} seeds)"
        )
    return r


def _unbreakable(phrase: str) -> str:
    return phrase.replace(" ", "\u00a0")  # textwrap breaks at ASCII spaces only


def _wrap(text: str, first: str) -> str:
    return textwrap.fill(
        text,
        PRINT_WIDTH,
        initial_indent=first,
        subsequent_indent="    ",
        break_on_hyphens=False,
        break_long_words=False,
    ).replace("\u00a0", " ")


def claim(label: str, verdict: str, checks: Mapping[str, bool]) -> None:
    """Assert every named check behind one ledger row, then print the row's verdict.

    ``label`` is the row's label (the row links it; the label sits right above this
    cell), ``verdict`` one of ``LEDGER_VERDICTS``, ``checks`` what the verdict rests
    on, each a bool computed in the cell. Raises :class:`ClaimFailed` naming the checks
    that are false.

    >>> claim("demo-row", "holds", {"the two agree within 1e-12": True})
    ledger row demo-row: holds
      [x] the two agree within 1e-12
    >>> try:
    ...     claim("demo-row", "holds", {"BN better": False})
    ... except ClaimFailed as e:
    ...     print(e)
    ledger row demo-row: verdict 'holds' no longer supported; false: ['BN better']
    """
    if verdict not in LEDGER_VERDICTS:
        raise ValueError(f"verdict must be one of {LEDGER_VERDICTS}, got {verdict!r}")
    if not checks:
        raise ValueError("a verdict rests on at least one check")
    for what, value in checks.items():
        if not isinstance(value, (bool, np.bool_)):
            raise TypeError(f"check {what!r} must be a bool, got {type(value).__name__}")
    failed = [what for what, value in checks.items() if not value]
    if failed:
        raise ClaimFailed(
            f"ledger row {label}: verdict {verdict!r} no longer supported; false: {failed}"
        )
    print(f"ledger row {label}: {verdict}")
    for what in checks:
        print(_wrap(f"[x] {what}", first="  "))
