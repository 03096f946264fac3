"""Side-by-side comparison for notebooks and tests.

`check` prints one stable line per comparison and raises when the tolerance is exceeded,
so a notebook that drifts from torch fails under nbval instead of printing a wrong number.
The error is shown rounded *up* to its power of ten: the exact last digits of a rounding
error differ between BLAS builds, the power of ten does not (and nbval compares text).
"""

from __future__ import annotations

import math

import numpy as np


class ToleranceExceeded(AssertionError):
    """Raised by `check` when two results differ by more than the stated tolerance."""


def to_numpy(a) -> np.ndarray:
    """A float64 NumPy copy of a NumPy array, torch tensor (any device, with grad) or scalar."""
    if hasattr(a, "detach"):  # a torch tensor; imported lazily so NumPy-only use stays light
        a = a.detach().cpu()
        if a.dtype.is_floating_point:
            a = a.double()
        a = a.numpy()
    return np.asarray(a, dtype=np.float64)


def power_of_ten_ceiling(x: float) -> str:
    """'0' for 0, else the smallest power of ten >= x, written as '1e-15'."""
    if x == 0:
        return "0"
    if not math.isfinite(x):
        return str(x)
    return f"1e{math.ceil(math.log10(x) - 1e-9):+03d}".replace("+", "")


def max_relative_error(ours, ref) -> float:
    """``max|ours - ref| / max|ref|``: a norm-wise relative error, defined when ref has zeros."""
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


def check(name: str, ours, ref, *, tol: float = 1e-12, atol: float = 0.0) -> None:
    """Compare `ours` with the reference `ref`; print one line; raise beyond tolerance.

    Passes when ``max|ours - ref| <= atol + tol * max|ref|`` (NaN and inf must match exactly).
    Returns nothing, so a notebook cell ending in a check shows only the printed line
    (an unrounded error would differ between machines); use `max_relative_error` to
    tabulate errors.
    """
    a, b = to_numpy(ours), to_numpy(ref)
    err = max_relative_error(a, b)
    scale = float(np.abs(b[np.isfinite(b)]).max()) if np.isfinite(b).any() else 0.0
    abs_err = err * scale if scale > 0 else err
    ok = math.isfinite(err) and abs_err <= atol + tol * scale
    bound = f"tol {tol:.0e}" + (f" + atol {atol:.1e}" if atol else "")
    mark = "ok  " if ok else "FAIL"
    shown = power_of_ten_ceiling(err)
    print(f"{mark} {name}: rel err <= {shown} ({bound}), shape {tuple(a.shape)}")
    if not ok:
        raise ToleranceExceeded(f"{name}: relative error {err:.3e} exceeds {bound}")
