"""Timing ratios for the book: ``python -m refimpl.bench``.

All numbers are ratios measured in one run (the best of several repeats, as timeit
advises, with the two sides of each ratio timed alternately), because absolute times depend
on the machine. torch gets one thread, as NumPy has. Not a test: CI never asserts them.

1. refimpl on NumPy, batch norm forward + closed-form backward, against torch's CPU
   kernel forward + autograd backward (the baseline refimpl is compared with).
2. Closed-form backward against backprop through refimpl's step-by-step torch graph.
3. One-pass (E[x^2] - E[x]^2) against two-pass moments.
4. Conv-BN fusion (`refimpl.fusion.fuse_model`): inference time of each network unfused,
   fused, and built without BN (the bound fusion can reach), as medians of paired runs.
"""

from __future__ import annotations

import time
import timeit

import numpy as np
import torch
from torch import nn

from refimpl import backward, core, functional
from refimpl.fusion import fuse_model

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


# --------------------------------------------------------------------------- fusion


def _batch_norm_module(channels: int) -> nn.Module:
    # The unfused baseline is torch's own eval-mode BN, the layer fusion removes.
    return torch.nn.BatchNorm2d(channels)


def _conv_block(c_in: int, c_out: int, batch_norm: bool, **conv) -> list[nn.Module]:
    """conv -> BN -> ReLU, or conv (with bias) -> ReLU for the network without BN."""
    layers = [nn.Conv2d(c_in, c_out, bias=not batch_norm, **conv)]
    if batch_norm:
        layers.append(_batch_norm_module(c_out))
    return [*layers, nn.ReLU()]


def plain_net(batch_norm: bool = True) -> nn.Sequential:
    """A small VGG-like net for 32x32 images: 3x3 convs, each followed by BN and ReLU.

    >>> plain_net()(torch.randn(2, 3, 32, 32)).shape
    torch.Size([2, 10])
    """
    widths, layers, c_in = [32, 32, "pool", 64, 64, "pool", 128, 128], [], 3
    for width in widths:
        if width == "pool":
            layers.append(nn.MaxPool2d(2))
            continue
        layers += _conv_block(c_in, width, batch_norm, kernel_size=3, padding=1)
        c_in = width
    return nn.Sequential(*layers, nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(c_in, 10))


def separable_net(batch_norm: bool = True) -> nn.Sequential:
    """A small MobileNet-like net: depthwise 3x3 then pointwise 1x1 convs, each with BN.

    >>> separable_net()(torch.randn(2, 3, 32, 32)).shape
    torch.Size([2, 10])
    """
    layers = _conv_block(3, 32, batch_norm, kernel_size=3, padding=1)
    c_in = 32
    for width, stride in [(64, 1), (128, 2), (128, 1), (256, 2), (256, 1)]:
        layers += _conv_block(
            c_in, c_in, batch_norm, kernel_size=3, padding=1, stride=stride, groups=c_in
        )
        layers += _conv_block(c_in, width, batch_norm, kernel_size=1)
        c_in = width
    return nn.Sequential(*layers, nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(c_in, 10))


FUSION_CASES = {
    "plain conv net, batch 8": (plain_net, (8, 3, 32, 32)),
    "depthwise-separable net, batch 8": (separable_net, (8, 3, 32, 32)),
    "plain conv net, batch 1 (latency)": (plain_net, (1, 3, 32, 32)),
}


def fusion_models(build, seed: int = 0) -> dict[str, nn.Module]:
    """The network with BN (eval, non-trivial running statistics), its fused version, and
    the same network built without BN, all in eval mode.

    Example:
        >>> models = fusion_models(plain_net)
        >>> sorted(models)
        ['fused', 'no BN', 'unfused']
        >>> x = torch.randn(2, 3, 8, 8)
        >>> bool(torch.allclose(models["fused"](x), models["unfused"](x), atol=1e-4))
        True
    """
    torch.manual_seed(seed)
    unfused = build(batch_norm=True)
    with torch.no_grad():
        for m in unfused.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.normal_(0, 0.5)
                m.running_var.uniform_(0.5, 2.0)
                m.weight.uniform_(0.5, 1.5)
                m.bias.normal_(0, 0.1)
    unfused.eval()
    fused, _ = fuse_model(unfused)
    return {"unfused": unfused, "fused": fused, "no BN": build(batch_norm=False).eval()}


def paired_times(
    fns, rounds: int = 15, seconds: float = 0.02, repeat: int = 3, timer=time.process_time
) -> np.ndarray:
    """Seconds per call, shape (rounds, len(fns)). In each round every function is timed
    in turn, in an order that rotates from round to round, so a busy machine slows all
    alike and each round gives one paired ratio; within a round each time is the best of
    ``repeat`` runs of about ``seconds`` (the least disturbed, as timeit advises).

    The default clock is this process's CPU time, not wall time: on a shared machine the
    time other programs hold the core does not count. With torch on one thread (all work
    in the calling thread) it is the time the work took; other programs still disturb
    the caches, which the repeats and the median absorb.

    Example:
        >>> times = paired_times([lambda: None, lambda: sum(range(100))], rounds=2,
        ...                      seconds=0.001, repeat=1)
        >>> times.shape, bool((times > 0).all())
        ((2, 2), True)
    """
    for fn in fns:
        fn()  # warm up (allocations, oneDNN primitives)
    numbers = []
    for fn in fns:
        number, took = timeit.Timer(fn, timer=timer).autorange()
        numbers.append(max(1, round(number * seconds / took)))
    times = np.zeros((rounds, len(fns)))
    for r in range(rounds):
        for k in range(len(fns)):
            i = (k + r) % len(fns)
            runs = timeit.Timer(fns[i], timer=timer).repeat(repeat, numbers[i])
            times[r, i] = min(runs) / numbers[i]
    return times


def _inference(model: nn.Module, x: torch.Tensor):
    def run():
        with torch.inference_mode():
            model(x)

    return run


def fusion_comparison(
    rounds: int = 15,
    seconds: float = 0.02,
    repeat: int = 3,
    seed: int = 0,
    timer=time.process_time,
) -> list[dict]:
    """Per network: median and quartiles of the paired ratios unfused/fused and fused/no-BN
    (and, under "ratios", every round's ratio).

    Example (a quick, meaningless run: real numbers need more rounds):
        >>> rows = fusion_comparison(rounds=1, seconds=0.001, repeat=1)
        >>> [row["network"] for row in rows][:2]
        ['plain conv net, batch 8', 'depthwise-separable net, batch 8']
    """
    rows = []
    for name, (build, shape) in FUSION_CASES.items():
        models = fusion_models(build, seed)
        x = torch.randn(shape)

        runs = [_inference(m, x) for m in models.values()]
        times = paired_times(runs, rounds, seconds, repeat, timer)
        unfused, fused, no_bn = times.T
        rows.append(
            {
                "network": name,
                "unfused ms": float(np.median(unfused)) * 1e3,
                "fused ms": float(np.median(fused)) * 1e3,
                "no BN ms": float(np.median(no_bn)) * 1e3,
                "unfused / fused": np.quantile(unfused / fused, [0.5, 0.25, 0.75]),
                "fused / no BN": np.quantile(fused / no_bn, [0.5, 0.25, 0.75]),
                "ratios": {"unfused / fused": unfused / fused, "fused / no BN": fused / no_bn},
            }
        )
    return rows


def format_fusion_table(rows: list[dict]) -> str:
    """The comparison as a Markdown table: medians of paired ratios with their quartiles.

    Example:
        >>> row = {"network": "net", "unfused ms": 2.0, "fused ms": 1.0, "no BN ms": 1.0,
        ...        "unfused / fused": [2.0, 1.9, 2.1], "fused / no BN": [1.0, 0.98, 1.02]}
        >>> print(format_fusion_table([row]).splitlines()[-1])
        | net | 2.00 | 1.00 | 1.00 | 2.000 (1.900-2.100) | 1.000 (0.980-1.020) |
    """
    lines = [
        "| network | unfused ms | fused ms | no-BN ms | unfused / fused | fused / no-BN |",
        "| --- | ---: | ---: | ---: | ---: | ---: |",
    ]
    for row in rows:
        ratios = [
            f"{q[0]:.3f} ({q[1]:.3f}-{q[2]:.3f})"
            for q in (row["unfused / fused"], row["fused / no BN"])
        ]
        lines.append(
            f"| {row['network']} | {row['unfused ms']:.2f} | {row['fused ms']:.2f} "
            f"| {row['no BN ms']:.2f} | {ratios[0]} | {ratios[1]} |"
        )
    return "\n".join(lines)


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
    rounds, repeat = 21, 5
    print(
        f"\nconv-BN fusion, eval, float32, 1 thread: median (quartiles) of {rounds} paired "
        f"rounds, each time the best of {repeat}"
    )
    print(format_fusion_table(fusion_comparison(rounds=rounds, seconds=0.05, repeat=repeat)))


if __name__ == "__main__":
    main()
