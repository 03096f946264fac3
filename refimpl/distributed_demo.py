"""Worker functions for the book's multi-process sync BN demo (notebook 19).

Spawned processes import their target by name, so these live in a module, not in the
notebook. Run them with :func:`refimpl.distributed.launch`.
"""

from __future__ import annotations

import contextlib
import functools
import time

import torch
import torch.distributed as dist

from refimpl.distributed import SyncBatchNorm, record_collectives

__all__ = ["train_steps", "timed_collectives", "step_times", "demo_worker", "timing_worker"]


def train_steps(rank, batches, sizes, weight, bias, protocol="all_gather"):
    """Forward and backward of a SyncBatchNorm on this rank's slice of each global batch.

    Returns, per step, the output, the input/weight/bias gradients and the collectives
    logged; then the running statistics.

    Example:
        >>> batch = (torch.randn(4, 2), torch.randn(4, 2))  # (input, output gradient)
        >>> run = train_steps(0, [batch], [4], torch.ones(2), torch.zeros(2))
        >>> step = run["steps"][0]  # no process group: plain batch norm, no collectives
        >>> step["output"].shape, step["grad_input"].shape, step["collectives"]
        (torch.Size([4, 2]), torch.Size([4, 2]), [])
    """
    start = sum(sizes[:rank])
    part = slice(start, start + sizes[rank])
    module = SyncBatchNorm(weight.shape[0], dtype=weight.dtype)
    module.stats_protocol = protocol
    with torch.no_grad():
        module.weight.copy_(weight)
        module.bias.copy_(bias)
    steps = []
    for x_full, g_full in batches:
        x = x_full[part].clone().requires_grad_()
        with record_collectives() as log:
            y = module(x)
            y.backward(g_full[part])
        steps.append(
            {
                "output": y.detach(),
                "grad_input": x.grad,
                "grad_weight": module.weight.grad.clone(),
                "grad_bias": module.bias.grad.clone(),
                "collectives": log,
            }
        )
        module.zero_grad()
    return {
        "steps": steps,
        "running_mean": module.running_mean.clone(),
        "running_var": module.running_var.clone(),
    }


@contextlib.contextmanager
def timed_collectives():
    """Add up the seconds this process spends inside ``all_gather`` / ``all_reduce``.

    Yields a dict ``{"all_gather": seconds, "all_reduce": seconds}`` that grows while
    inside. The time includes waiting for the slowest rank to arrive: a collective ends
    only when every rank has joined it.

    >>> with timed_collectives() as spent:
    ...     pass
    >>> spent
    {'all_gather': 0.0, 'all_reduce': 0.0}
    """
    spent = {"all_gather": 0.0, "all_reduce": 0.0}
    real = {"all_gather": dist.all_gather, "all_reduce": dist.all_reduce}

    def timed(op):
        @functools.wraps(real[op])
        def wrapper(*args, **kwargs):
            begin = time.perf_counter()
            try:
                return real[op](*args, **kwargs)
            finally:
                spent[op] += time.perf_counter() - begin

        return wrapper

    dist.all_gather, dist.all_reduce = timed("all_gather"), timed("all_reduce")
    try:
        yield spent
    finally:
        dist.all_gather, dist.all_reduce = real["all_gather"], real["all_reduce"]


def step_times(rank, shape, repeats, protocols=("all_gather", "all_reduce"), sizes=(1, 2, 4)):
    """Seconds per forward+backward step of one SyncBatchNorm layer on groups of the first
    1, 2, 4 ranks, each rank holding a batch of ``shape`` (weak scaling), split into the
    time inside the collectives and the rest (local computation: moments, merge,
    normalization, the backward's arithmetic).

    Returns ``{(size, protocol): {"step", "all_gather", "all_reduce", "compute"}}``,
    each the median over ``repeats`` steps (after two warm-up steps); "compute" is the
    median of step minus collective time. The ranks of a group start each step together
    (a barrier, not timed), so a collective's time is its latency plus the other ranks'
    jitter. Ranks outside a group wait at a barrier. A group of one does not
    communicate: plain batch norm, all compute.

    Example:
        >>> dist.init_process_group("gloo", store=dist.HashStore(), rank=0, world_size=1)
        >>> times = step_times(0, shape=(4, 2), repeats=1, sizes=(1,))
        >>> sorted(times), sorted(times[1, "all_gather"])
        ([(1, 'all_gather'), (1, 'all_reduce')], ['all_gather', 'all_reduce', 'compute', 'step'])
        >>> times[1, "all_gather"]["all_reduce"], times[1, "all_gather"]["step"] > 0
        (0.0, True)
        >>> dist.destroy_process_group()
    """
    groups = {size: dist.new_group(list(range(size))) for size in sizes}  # all ranks call
    x = torch.randn(shape)
    g = torch.randn(shape)
    times = {}

    def median(values):
        return sorted(values)[len(values) // 2]

    for size in sizes:
        for protocol in protocols:
            if rank < size:
                module = SyncBatchNorm(shape[1], process_group=groups[size])
                module.stats_protocol = protocol
                samples = []
                for i in range(repeats + 2):
                    xr = x.clone().requires_grad_()
                    if size > 1:
                        dist.barrier(group=groups[size])  # start together, not timed
                    with timed_collectives() as spent:
                        begin = time.perf_counter()
                        module(xr).backward(g)
                        step = time.perf_counter() - begin
                    if i >= 2:  # two warm-up steps
                        samples.append({"step": step, **spent,
                                        "compute": step - sum(spent.values())})
                times[(size, protocol)] = {key: median([s[key] for s in samples])
                                           for key in samples[0]}
            dist.barrier()
    return times


def demo_worker(rank, world_size, parity, timing):
    """Notebook 19's one launch: the parity run (both protocols), then the timings.

    Example:
        >>> dist.init_process_group("gloo", store=dist.HashStore(), rank=0, world_size=1)
        >>> parity = {"batches": [(torch.randn(4, 2), torch.randn(4, 2))], "sizes": [4],
        ...           "weight": torch.ones(2), "bias": torch.zeros(2)}
        >>> timing = {"shape": (4, 2), "repeats": 1, "sizes": (1,)}
        >>> result = demo_worker(0, 1, parity, timing)
        >>> sorted(result), len(result["times"])
        (['all_gather', 'all_reduce', 'times'], 2)
        >>> dist.destroy_process_group()
    """
    return {
        "all_gather": train_steps(rank, **parity),
        "all_reduce": train_steps(rank, **parity, protocol="all_reduce"),
        "times": step_times(rank, **timing),
    }


def timing_worker(rank, world_size, timing):
    """A launch that only times: :func:`step_times` with ``timing``'s arguments.

    Example:
        >>> dist.init_process_group("gloo", store=dist.HashStore(), rank=0, world_size=1)
        >>> times = timing_worker(0, 1, {"shape": (4, 2), "repeats": 1, "sizes": (1,)})
        >>> sorted(times)
        [(1, 'all_gather'), (1, 'all_reduce')]
        >>> dist.destroy_process_group()
    """
    return step_times(rank, **timing)
