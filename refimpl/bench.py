"""Timing ratios for the book: ``python -m refimpl.bench``.

All numbers are ratios measured in one run (the best of several repeats, as timeit
advises, with the two sides of each ratio timed alternately), because absolute times depend
on the machine. torch gets one thread, as NumPy has. Not a test: CI never asserts them.

1. refimpl on NumPy, batch norm forward + closed-form backward, against torch's CPU
   kernel forward + autograd backward (the baseline refimpl is compared with).
2. Closed-form backward against backprop through refimpl's step-by-step torch graph.
3. One-pass (E[x^2] - E[x]^2) against two-pass moments.
"""

from __future__ import annotations

import timeit

import numpy as np
import torch

from refimpl import backward, core, functional

SHAPE = (32, 64, 16, 16)
REDUCE = (0, 2, 3)


def best_pair(fn_a, fn_b, repeat: int = 9) -> tuple[float, float]:
    """Seconds per call of each: the minimum over ``repeat`` runs (the least disturbed).

    The two are timed alternately, so that a busy machine slows both alike.

    Example:

    >>> fast, slow = best_pair(lambda: sum(range(10)), lambda: sum(range(10_000)), repeat=3)
    >>> fast > 0 and slow > 0  # seconds per call; their ratio is not asserted anywhere
    True
    """
    timers = [timeit.Timer(fn_a), timeit.Timer(fn_b)]
    for fn in (fn_a, fn_b):
        fn()  # warm up (allocations, thread pools)
    numbers = [max(1, t.autorange()[0] // 4) for t in timers]
    times = [[], []]
    for _ in range(repeat):
        for i, timer in enumerate(timers):
            times[i].append(timer.timeit(numbers[i]) / numbers[i])
    return min(times[0]), min(times[1])


def _inputs(seed: int = 0):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal(SHAPE, dtype=np.float32) * 2 + 1
    g = rng.standard_normal(SHAPE, dtype=np.float32)
    w = rng.standard_normal(SHAPE[1], dtype=np.float32)
    b = rng.standard_normal(SHAPE[1], dtype=np.float32)
    return x, g, w, b


def numpy_against_torch() -> tuple[float, float]:
    """Seconds per call: refimpl's batch norm forward and closed-form backward on
    NumPy, and torch's CPU kernel forward and autograd backward (the baseline).

    Example:

    >>> ours, torchs = numpy_against_torch()  # doctest: +SKIP
    >>> print(f"refimpl / torch = {ours / torchs:.1f}x")  # doctest: +SKIP
    """
    x, g, w, b = _inputs()
    mean, var = np.zeros(SHAPE[1], np.float32), np.ones(SHAPE[1], np.float32)

    def refimpl_numpy():
        functional.batch_norm(x, mean, var, w, b, True, 0.1, 1e-5)
        backward.batch_norm_backward(g, x, w, 1e-5)

    xt = torch.from_numpy(x).requires_grad_()
    wt = torch.from_numpy(w).requires_grad_()
    bt = torch.from_numpy(b).requires_grad_()
    gt = torch.from_numpy(g)
    mean_t, var_t = torch.zeros(SHAPE[1]), torch.ones(SHAPE[1])

    def torch_cpu():
        # the baseline is torch's own kernel, so it may (and must) be called here
        y = torch.nn.functional.batch_norm(xt, mean_t, var_t, wt, bt, True, 0.1, 1e-5)
        y.backward(gt)

    return best_pair(refimpl_numpy, torch_cpu)


def closed_form_against_graph() -> tuple[float, float]:
    """Seconds per call: refimpl's closed-form backward (after a forward without a
    graph), and autograd through refimpl's step-by-step torch graph.

    Example:

    >>> closed, graph = closed_form_against_graph()  # doctest: +SKIP
    >>> print(f"graph / closed form = {graph / closed:.1f}x")  # doctest: +SKIP
    """
    x, g, w, b = (torch.from_numpy(a) for a in _inputs())
    x_graph = x.clone().requires_grad_()
    w_graph, b_graph = w.clone().requires_grad_(), b.clone().requires_grad_()

    def closed_form():
        with torch.no_grad():
            functional.batch_norm(x, None, None, w, b, True, 0.1, 1e-5)
            backward.batch_norm_backward(g, x, w, 1e-5)

    def graph():
        y = functional.batch_norm(x_graph, None, None, w_graph, b_graph, True, 0.1, 1e-5)
        y.backward(g)

    return best_pair(closed_form, graph)


def one_pass_against_two_pass() -> tuple[float, float]:
    """Seconds per call of the one-pass and the two-pass moments over batch norm's axes.

    Example:

    >>> one, two = one_pass_against_two_pass()
    >>> one > 0 and two > 0
    True
    """
    x = _inputs()[0]
    return best_pair(lambda: core.naive_moments(x, REDUCE), lambda: core.moments(x, REDUCE))


def main() -> None:
    """Print the three timing ratios (``python -m refimpl.bench``).

    Example:

    >>> main()  # doctest: +SKIP
    """
    # NumPy runs on one core; give torch one too, so the ratio compares the algorithms.
    torch.set_num_threads(1)
    print(f"batch norm, input {SHAPE} float32, torch threads: {torch.get_num_threads()}")
    ours, theirs = numpy_against_torch()
    print(
        f"refimpl (NumPy) fwd+bwd {ours * 1e3:8.2f} ms | torch CPU fwd+bwd "
        f"{theirs * 1e3:8.2f} ms | refimpl / torch = {ours / theirs:.2f}x"
    )
    closed, graph = closed_form_against_graph()
    print(
        f"closed-form bwd (+fwd) {closed * 1e3:8.2f} ms | autograd through refimpl "
        f"{graph * 1e3:8.2f} ms | graph / closed form = {graph / closed:.2f}x"
    )
    one, two = one_pass_against_two_pass()
    print(
        f"one-pass moments       {one * 1e3:8.2f} ms | two-pass moments        "
        f"{two * 1e3:8.2f} ms | two-pass / one-pass = {two / one:.2f}x"
    )


if __name__ == "__main__":
    main()
