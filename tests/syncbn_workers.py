"""Worker functions for tests/test_syncbn.py, run by refimpl.distributed.launch.

They live in a module (not in the test file's closures) because spawned processes import
them by name. Each takes (rank, world_size, ...) and returns plain tensors/dicts.
"""

from __future__ import annotations

import torch

from refimpl.distributed import SyncBatchNorm, record_collectives


def _slice(full, sizes, rank):
    start = sum(sizes[:rank])
    return full[start : start + sizes[rank]]


def _module(case, channels, dtype):
    module = SyncBatchNorm(
        channels,
        momentum=case.get("momentum", 0.1),
        affine=case.get("affine", True),
        track_running_stats=case.get("track", True),
        dtype=dtype,
    )
    module.stats_protocol = case.get("protocol", "all_gather")
    if module.weight is not None:
        with torch.no_grad():
            module.weight.copy_(case["weight"])
            module.bias.copy_(case["bias"])
    return module


def parity_worker(rank, world_size, cases):
    """Train each case's module for its steps on this rank's slice; report everything."""
    results = {}
    for case in cases:
        steps = case["steps"]
        x0 = steps[0][0]
        module = _module(case, x0.shape[1], x0.dtype)
        out = {"steps": [], "log": []}
        for x_full, g_full in steps:
            x = _slice(x_full, case["sizes"], rank).clone().requires_grad_()
            g = _slice(g_full, case["sizes"], rank)
            with record_collectives() as log:
                y = module(x)
                y.backward(g)
            out["log"].append(log)
            grads = {"input": x.grad.detach().clone(), "output": y.detach().clone()}
            if module.weight is not None:
                grads["weight"] = module.weight.grad.detach().clone()
                grads["bias"] = module.bias.grad.detach().clone()
                module.zero_grad()
            out["steps"].append(grads)
        if module.running_mean is not None:
            out["running_mean"] = module.running_mean.clone()
            out["running_var"] = module.running_var.clone()
            out["num_batches_tracked"] = int(module.num_batches_tracked)
            module.eval()
            x_last = _slice(steps[-1][0], case["sizes"], rank)
            with record_collectives() as log:
                out["eval_output"] = module(x_last).detach().clone()
            out["eval_log"] = log
        results[case["name"]] = out
    if world_size > 1:  # last: after the error the modules are left half-stepped
        results["mismatch errors"] = mismatch_worker(rank, world_size)
    return results


def mismatch_worker(rank, world_size):
    """Rank 0 feeds 3 channels, the others 4: every rank must get the same clear error."""
    errors = []
    for affine in (False, True):
        channels = 3 if rank == 0 else 4
        module = SyncBatchNorm(channels, affine=affine, track_running_stats=affine)
        try:
            module(torch.randn(4, channels, 2))
        except ValueError as error:
            errors.append(str(error))
    return errors
