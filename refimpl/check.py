"""Side-by-side comparison for notebooks and tests.

`check` prints one stable line per comparison and raises when the tolerance is exceeded,
so a notebook that drifts from torch fails under nbval instead of printing a wrong number.

It prints which tolerance was met, never the observed error: round-off depends on the
CPU's code path (the same comparison gives 1e-15 with AVX2 kernels and 0 with the
portable ones), and nbval compares text, so a printed error would make the stored output
verify only on the machine that recorded it. Where the size of an error is the lesson,
`error_bound` shows it as a decade with a floor below which all round-off looks alike.
"""

from __future__ import annotations

import math

import numpy as np


class ToleranceExceeded(AssertionError):
    """Raised by `check` when two results differ by more than the stated tolerance.

    Example:

    >>> try:
    ...     check("off by one", [1.0, 2.0], [1.0, 3.0])
    ... except ToleranceExceeded:
    ...     print("raised")
    FAIL off by one: relative error 3.333e-01, not within 1e-12, shape (2,)
    raised
    """


def to_numpy(a) -> np.ndarray:
    """A float64 NumPy copy of a NumPy array, torch tensor (any device, with grad) or scalar.

    Example:

    >>> import torch
    >>> a = to_numpy(torch.ones(2, requires_grad=True))
    >>> a.dtype.name, a.tolist()
    ('float64', [1.0, 1.0])
    """
    if hasattr(a, "detach"):  # a torch tensor; imported lazily so NumPy-only use stays light
        a = a.detach().cpu()
        if a.dtype.is_floating_point:
            a = a.double()
        a = a.numpy()
    return np.asarray(a, dtype=np.float64)


def power_of_ten_ceiling(x: float) -> str:
    """'0' for 0, else the smallest power of ten >= x, written as '1e-15'.

    Example:

    >>> power_of_ten_ceiling(3e-16), power_of_ten_ceiling(0.02), power_of_ten_ceiling(0.0)
    ('1e-15', '1e-01', '0')
    """
    if x == 0:
        return "0"
    if not math.isfinite(x):
        return str(x)
    return f"1e{math.ceil(math.log10(x) - 1e-9):+03d}".replace("+", "")


def max_relative_error(ours, ref) -> float:
    """``max|ours - ref| / max|ref|``: a norm-wise relative error, defined when ref has zeros.

    Example:

    >>> round(max_relative_error([1.0, 2.0], [1.0, 2.5]), 6)  # 0.5 / 2.5
    0.2
    """
    a, b = to_numpy(ours), to_numpy(ref)
    if a.shape != b.shape:
        raise ToleranceExceeded(f"shape mismatch: {a.shape} vs {b.shape}")
    if a.size == 0:
        return 0.0
    same_nonfinite = (np.isnan(a) & np.isnan(b)) | (np.isinf(a) & (a == b))
    if np.any(~np.isfinite(a) & ~same_nonfinite) or np.any(~np.isfinite(b) & ~same_nonfinite):
        return math.inf
    diff = np.abs(np.where(same_nonfinite, 0.0, a - b)).max()
    scale = np.abs(np.where(same_nonfinite, 0.0, b)).max()
    return float(diff / scale) if scale > 0 else float(diff)


def error_bound(x: float, floor: float) -> str:
    """A code-path-stable rendering of an error: '<= 1e-12' at or below `floor`, else the
    power of ten that bounds it ('<= 1e-05').

    Use it where the size of an error is the lesson (float32 vs float64, naive vs two-pass
    moments), with `floor` well above the round-off that differs between CPUs, and keep
    the printed decades well away from the values they bound (nbval's second pass, on
    another code path, proves that they are).

    Example:

    >>> error_bound(3e-7, floor=1e-12)
    '<= 1e-06'
    >>> error_bound(2e-16, floor=1e-12)  # all round-off looks alike below the floor
    '<= 1e-12'
    """
    if not x > floor:  # also catches NaN, shown as the floor would hide it
        if math.isnan(x):
            return "nan"
        return f"<= {power_of_ten_ceiling(floor)}"
    return f"<= {power_of_ten_ceiling(x)}"


def describe_tolerance(tol: float, atol: float = 0.0) -> str:
    """The bound `check` states: 'within 1e-12' or 'within 1e-06 + 1.0e-07 absolute'.

    Example:

    >>> describe_tolerance(1e-12)
    'within 1e-12'
    >>> describe_tolerance(1e-6, atol=1e-7)
    'within 1e-06 + 1.0e-07 absolute'
    """
    bound = f"within {tol:.0e}"
    return bound + (f" + {atol:.1e} absolute" if atol else "")


def check(name: str, ours, ref, *, tol: float = 1e-12, atol: float = 0.0) -> None:
    """Compare `ours` with the reference `ref`; print one line; raise beyond tolerance.

    Passes when ``max|ours - ref| <= atol + tol * max|ref|`` (NaN and inf must match exactly),
    and prints ``ok   NAME: agree within TOL, shape S``: the tolerance met, never the
    observed round-off, which differs between CPUs. Returns nothing, so a cell ending in a
    check shows only that line; use `max_relative_error` for the number itself.

    Example:

    >>> import numpy as np
    >>> check("sum", np.array([0.1 + 0.2]), np.array([0.3]))
    ok   sum: agree within 1e-12, shape (1,)
    """
    a, b = to_numpy(ours), to_numpy(ref)
    err = max_relative_error(a, b)
    scale = float(np.abs(b[np.isfinite(b)]).max()) if np.isfinite(b).any() else 0.0
    abs_err = err * scale if scale > 0 else err
    ok = math.isfinite(err) and abs_err <= atol + tol * scale
    bound = describe_tolerance(tol, atol)
    if ok:
        print(f"ok   {name}: agree {bound}, shape {tuple(a.shape)}")
        return
    print(f"FAIL {name}: relative error {err:.3e}, not {bound}, shape {tuple(a.shape)}")
    raise ToleranceExceeded(f"{name}: relative error {err:.3e} exceeds {bound}")


def check_table(rows, *, tol: float = 1e-12, atol: float = 0.0) -> None:
    """`check` for a run of comparisons, printed as one table (one tolerance for all).

    ``rows`` holds ``(name, ours, ref)`` triples. Every row is compared as `check` does;
    the table is printed in full, then the first row beyond tolerance raises.

    >>> import numpy as np
    >>> check_table([("ones", np.ones(3), np.ones(3)), ("zero", 0.0, 0.0)])
    comparison  shape  agree within 1e-12
    ones        (3,)   ok
    zero        ()     ok
    """
    rows = [(name, to_numpy(ours), to_numpy(ref)) for name, ours, ref in rows]
    results = []
    for name, a, b in rows:
        err = max_relative_error(a, b)
        scale = float(np.abs(b[np.isfinite(b)]).max()) if np.isfinite(b).any() else 0.0
        abs_err = err * scale if scale > 0 else err
        ok = math.isfinite(err) and abs_err <= atol + tol * scale
        results.append((name, str(tuple(a.shape)), ok, err))
    bound = describe_tolerance(tol, atol)
    name_width = max(len("comparison"), *(len(r[0]) for r in results))
    shape_width = max(len("shape"), *(len(r[1]) for r in results))
    print(f"{'comparison':<{name_width}}  {'shape':<{shape_width}}  agree {bound}")
    for name, shape, ok, err in results:
        verdict = "ok" if ok else f"FAIL (relative error {err:.3e})"
        print(f"{name:<{name_width}}  {shape:<{shape_width}}  {verdict}")
    for name, _, ok, err in results:
        if not ok:
            raise ToleranceExceeded(f"{name}: relative error {err:.3e} exceeds {bound}")
