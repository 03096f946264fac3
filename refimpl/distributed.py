"""Synchronized batch norm over ``torch.distributed`` (gloo on CPU, nccl on GPUs).

Each rank holds a slice of the global batch. In training, :class:`SyncBatchNorm`
normalizes every slice with the statistics of the *whole* batch, as if one device held it:

- forward: each rank computes its slice's ``(count, mean, M2)`` per channel (two passes,
  as :func:`refimpl.core.moments`, accumulated as torch accumulates: float64 for float32
  on the CPU); one ``all_gather`` brings every rank's triple to every
  rank, and Chan's parallel formula (:func:`refimpl.core.combine_moments`) merges them in
  rank order, so every rank gets bit-identical global statistics. Slices of different
  sizes weigh by their counts; an empty slice sends a zero count and is skipped.
- backward: the closed-form gradient (see :mod:`refimpl.backward`)
  ``dL/dx = w * rstd / n * (n * g - sum(g) - x_hat * sum(g * x_hat))`` needs two
  per-channel sums over the global batch: one ``all_reduce`` of both. The weight and bias
  gradients stay local (the rank's share); DDP's gradient all-reduce adds the shares.

Without an initialized process group, with a group of one rank, or in eval mode it is
refimpl's plain batch norm. :func:`launch` starts gloo workers on 127.0.0.1 for tests
and notebooks, and :func:`record_collectives` counts what goes over the wire.
"""

from __future__ import annotations

import contextlib
import functools
import math
import os
import pickle
import socket
import tempfile
from datetime import timedelta

import torch
import torch.distributed as dist
from torch import Tensor

from refimpl import core, functional
from refimpl.nn.batchnorm import _BatchNorm

__all__ = [
    "SyncBatchNorm",
    "local_moments",
    "merge_moments",
    "gather_moments",
    "allreduce_moments",
    "sum_of_squares_moments",
    "PROTOCOLS",
    "record_collectives",
    "launch",
    "free_port",
]


# --------------------------------------------------------------------------- statistics


def _compute_dtype(dtype: torch.dtype) -> torch.dtype:
    """Half inputs are normalized in float32 (torch's opmath type); others in their own."""
    return torch.float32 if dtype in (torch.float16, torch.bfloat16) else dtype


def _stats_dtype(input: Tensor) -> torch.dtype:
    """Statistics are accumulated (and exchanged) as torch's kernels accumulate them: in
    float64 for float32 on the CPU (its accumulate type there), else in the compute dtype
    (float32 on GPUs, as torch.nn.SyncBatchNorm). A float32 mean of 1e4 is only good to
    about 1e-3, and the merge multiplies differences of means: float64 keeps the merged
    variance within torch's own float32 error on the CPU."""
    compute = _compute_dtype(input.dtype)
    return torch.float64 if compute == torch.float32 and input.device.type == "cpu" else compute


def local_moments(x: Tensor) -> tuple[int, Tensor, Tensor]:
    """``(count, mean, M2)`` of each channel of an ``(N, C, *)`` slice; M2 = sum of
    squared deviations from the slice's own mean (two passes, no cancellation).

    >>> count, mean, m2 = local_moments(torch.tensor([[1.0], [3.0]]))
    >>> count, mean.tolist(), m2.tolist()
    (2, [2.0], [2.0])
    """
    axes = core.batch_axes(tuple(x.shape)).reduce
    count = math.prod(x.shape[a] for a in axes)
    channels = x.shape[1]
    if count == 0:  # an empty slice still takes part, with nothing to add
        zeros = x.new_zeros(channels)
        return 0, zeros, zeros.clone()
    mean, var = core.moments(x, axes)
    return count, mean.reshape(channels), (var * count).reshape(channels)


def merge_moments(rows) -> tuple[float, Tensor, Tensor]:
    """Merge ``(count, mean, M2)`` rows with Chan's formula, in order, skipping empty ones.

    >>> merged = merge_moments([(2, torch.tensor([2.0]), torch.tensor([2.0])),
    ...                         (1, torch.tensor([5.0]), torch.tensor([0.0]))])
    >>> merged[0], merged[1].tolist(), merged[2].tolist()  # of [1, 3, 5]
    (3.0, [3.0], [8.0])
    """
    total = mean = m2 = None
    for count, row_mean, row_m2 in rows:
        count = float(count)
        if count == 0:
            continue
        if total is None:
            total, mean, m2 = count, row_mean, row_m2
        else:
            total, mean, m2 = core.combine_moments(total, mean, m2, count, row_mean, row_m2)
    if total is None:  # every slice empty: nothing to normalize
        return 0.0, rows[0][1] * 0, rows[0][2] * 0
    return total, mean, m2


def gather_moments(count: int, mean: Tensor, m2: Tensor, group) -> tuple[float, Tensor, Tensor]:
    """One ``all_gather`` of each rank's ``[count, mean, M2]`` (2C + 1 values), merged by
    Chan's formula in rank order, identically on every rank. The chosen protocol.

    Example:
        >>> import torch.distributed as dist
        >>> dist.init_process_group("gloo", store=dist.HashStore(), rank=0, world_size=1)
        >>> count, mean, m2 = local_moments(torch.tensor([[1.0], [3.0]]))
        >>> total, mean, m2 = gather_moments(count, mean, m2, dist.group.WORLD)
        >>> total, mean.tolist(), m2.tolist()  # one rank: its own moments
        (2.0, [2.0], [2.0])
        >>> dist.destroy_process_group()
    """
    payload = torch.cat([mean.new_full((1,), float(count)), mean, m2])
    gathered = [torch.empty_like(payload) for _ in range(dist.get_world_size(group))]
    dist.all_gather(gathered, payload, group=group)
    channels = mean.shape[0]
    rows = [(row[0].item(), row[1 : 1 + channels], row[1 + channels :]) for row in gathered]
    return merge_moments(rows)


def allreduce_moments(count: int, mean: Tensor, m2: Tensor, group) -> tuple[float, Tensor, Tensor]:
    """Two ``all_reduce``s: ``[count, sum]`` gives the global mean g; then each rank's M2
    about g (``M2 + count * (mean - g)^2``, the parallel-axis theorem) is summed. Stable
    and O(C) bytes whatever the world size, but two round trips instead of one.

    Example:
        >>> import torch.distributed as dist
        >>> dist.init_process_group("gloo", store=dist.HashStore(), rank=0, world_size=1)
        >>> count, mean, m2 = local_moments(torch.tensor([[1.0], [3.0]]))
        >>> total, mean, m2 = allreduce_moments(count, mean, m2, dist.group.WORLD)
        >>> total, mean.tolist(), m2.tolist()  # one rank: its own moments
        (2.0, [2.0], [2.0])
        >>> dist.destroy_process_group()
    """
    head = torch.cat([mean.new_full((1,), float(count)), mean * count])
    dist.all_reduce(head, group=group)
    total = head[0].item()
    if total == 0:
        return 0.0, mean * 0, m2 * 0
    global_mean = head[1:] / total
    about_global = m2 + count * (mean - global_mean) ** 2
    dist.all_reduce(about_global, group=group)
    return total, global_mean, about_global


def sum_of_squares_moments(
    count: int, mean: Tensor, m2: Tensor, group
) -> tuple[float, Tensor, Tensor]:
    """The textbook one-``all_reduce`` protocol: sums of x and of x^2, then
    ``M2 = sum(x^2) - n * mean^2``. Kept only to show why not: it cancels
    catastrophically when ``|mean| >> std`` (float32 at a channel mean of 1e4).

    Example:
        >>> import torch.distributed as dist
        >>> dist.init_process_group("gloo", store=dist.HashStore(), rank=0, world_size=1)
        >>> x = 1e4 + torch.tensor([-1.0, 1.0]).repeat(500).reshape(1000, 1)  # variance 1
        >>> moments = local_moments(x)
        >>> moments[2].item()  # M2 of the slice, exact
        1000.0
        >>> gather_moments(*moments, dist.group.WORLD)[2].item()
        1000.0
        >>> sum_of_squares_moments(*moments, dist.group.WORLD)[2].item()  # all lost
        0.0
        >>> dist.destroy_process_group()
    """
    sum_x = mean * count
    sum_x2 = m2 + sum_x * mean  # what a one-pass kernel would have accumulated
    payload = torch.cat([mean.new_full((1,), float(count)), sum_x, sum_x2])
    dist.all_reduce(payload, group=group)
    channels = mean.shape[0]
    total = payload[0].item()
    if total == 0:
        return 0.0, mean * 0, m2 * 0
    global_mean = payload[1 : 1 + channels] / total
    return total, global_mean, payload[1 + channels :] - total * global_mean**2


PROTOCOLS = {
    "all_gather": gather_moments,
    "all_reduce": allreduce_moments,
    "sum_of_squares": sum_of_squares_moments,
}


# --------------------------------------------------------------------------- autograd


class _SyncBatchNormFunction(torch.autograd.Function):
    """Forward: local moments, one collective (the protocol), normalize. Backward: one
    all_reduce of (sum g, sum g * x_hat), then the closed form with the global count."""

    @staticmethod
    def forward(
        ctx, input, weight, bias, running_mean, running_var, eps, momentum, group, protocol
    ):  # noqa: E501
        x = input.to(_compute_dtype(input.dtype))
        count, mean, m2 = local_moments(x.to(_stats_dtype(input)))
        total, mean, m2 = PROTOCOLS[protocol](count, mean, m2, group)
        var = m2 / total if total > 0 else m2
        if running_mean is not None and total > 0:  # as plain BN: no update from no data
            unbiased = m2 / (total - 1) if total > 1 else m2 * float("nan")
            functional._update_running_(running_mean, mean, momentum)
            functional._update_running_(running_var, unbiased, momentum)
        rstd = (1 / torch.sqrt(var + eps)).to(x.dtype)
        mean = mean.to(x.dtype)
        shape = core.param_shape(x.ndim, x.shape, (1,))
        x_hat = (x - mean.reshape(shape)) * rstd.reshape(shape)
        ctx.save_for_backward(x, weight, mean, rstd)
        ctx.total, ctx.group = total, group
        return core.affine(x_hat, weight, bias).to(input.dtype)

    @staticmethod
    def backward(ctx, grad_output):
        x, weight, mean, rstd = ctx.saved_tensors
        shape = core.param_shape(x.ndim, x.shape, (1,))
        axes = core.batch_axes(tuple(x.shape)).reduce
        g = grad_output.to(x.dtype)
        x_hat = (x - mean.reshape(shape)) * rstd.reshape(shape)
        sum_g = g.sum(dim=axes)  # sums over an empty slice are zeros: still sent
        sum_g_xhat = (g * x_hat).sum(dim=axes)
        grad_input = None
        if ctx.needs_input_grad[0]:
            both = torch.cat([sum_g, sum_g_xhat])
            dist.all_reduce(both, group=ctx.group)  # the backward's one collective
            global_g, global_g_xhat = both.split(sum_g.shape[0])
            n = ctx.total
            scale = rstd if weight is None else weight.to(x.dtype) * rstd
            grad_input = (scale / n).reshape(shape) * (
                n * g - global_g.reshape(shape) - x_hat * global_g_xhat.reshape(shape)
            )
            grad_input = grad_input.to(grad_output.dtype)
        # Local shares: the sum over ranks (DDP's all-reduce) is the global gradient.
        grad_weight = sum_g_xhat.to(weight.dtype) if ctx.needs_input_grad[1] else None
        grad_bias = sum_g.to(grad_output.dtype) if ctx.needs_input_grad[2] else None
        return grad_input, grad_weight, grad_bias, None, None, None, None, None, None


# --------------------------------------------------------------------------- the module


class SyncBatchNorm(_BatchNorm):
    """Batch norm with the statistics of the batch held by all ranks of a process group.

    torch.nn.SyncBatchNorm's constructor, buffers and ``convert_sync_batchnorm``. Any
    input of rank >= 2. Synchronizes only in training with an initialized process group
    of two or more ranks (``process_group``, else the default group); otherwise it is
    refimpl's plain batch norm. ``stats_protocol`` picks how statistics travel (see
    ``PROTOCOLS``); the default, ``"all_gather"``, is one collective per forward.

    >>> m = SyncBatchNorm(3)
    >>> m(torch.randn(4, 3, 2)).shape  # no process group: plain batch norm
    torch.Size([4, 3, 2])
    """

    stats_protocol = "all_gather"

    def __init__(
        self,
        num_features: int,
        eps: float = 1e-5,
        momentum: float | None = 0.1,
        affine: bool = True,
        track_running_stats: bool = True,
        process_group=None,
        device=None,
        dtype=None,
        *,
        bias: bool = True,
    ) -> None:
        super().__init__(
            num_features, eps, momentum, affine, track_running_stats, device, dtype, bias=bias
        )
        self.process_group = process_group
        self._agreed = None  # the channel count all ranks confirmed (see _agree_on_channels)

    def _check_input_dim(self, input: Tensor) -> None:
        if input.dim() < 2:
            raise ValueError(f"expected at least 2D input (got {input.dim()}D input)")

    def _sync_group(self):
        """The group to synchronize over, or None when plain batch norm is what to do."""
        if not (self.training and dist.is_available() and dist.is_initialized()):
            return None
        group = self.process_group if self.process_group is not None else dist.group.WORLD
        return group if dist.get_world_size(group) > 1 else None

    def _agree_on_channels(self, input: Tensor, group) -> None:
        """Ranks whose payloads differ in size would crash (gloo aborts) or hang inside the
        collective, so before the first synchronized step every rank shows its channel
        count and stats dtype, and all raise the same error if they differ. A module with
        per-channel state keeps its count; one without repeats the check every step."""
        stateless = self.weight is None and self.running_mean is None
        key = (input.shape[1], torch.finfo(_stats_dtype(input)).bits, int(stateless))
        if self._agreed == key and not stateless:
            return
        mine = torch.tensor(key, dtype=torch.int64, device=input.device)
        everyone = [torch.empty_like(mine) for _ in range(dist.get_world_size(group))]
        dist.all_gather(everyone, mine, group=group)
        keys = [tuple(k.tolist()) for k in everyone]
        if len(set(keys)) > 1:
            raise ValueError(
                "SyncBatchNorm: ranks disagree on the input: channels "
                f"{[k[0] for k in keys]}, statistics dtype bits {[k[1] for k in keys]} "
                "(in rank order); every rank must feed the same channels and dtype"
            )
        self._agreed = key

    def forward(self, input: Tensor) -> Tensor:
        self._check_input_dim(input)
        if input.size(1) == 0:
            raise ValueError("SyncBatchNorm number of input channels should be non-zero")
        group = self._sync_group()
        if group is None:
            return super().forward(input)
        # Same checks as plain batch norm in training (per-channel sizes, eps).
        functional._check_per_channel(
            {
                "running_mean": self.running_mean,
                "running_var": self.running_var,
                "weight": self.weight,
                "bias": self.bias,
            },
            input.shape[1],
        )
        if self.eps <= 0.0:
            raise ValueError(f"batch_norm eps must be positive during training, but got {self.eps}")
        self._agree_on_channels(input, group)
        factor = 0.0 if self.momentum is None else self.momentum
        if self.track_running_stats:
            self.num_batches_tracked.add_(1)
            if self.momentum is None:  # cumulative average, as plain batch norm
                factor = 1.0 / float(self.num_batches_tracked)
        track = self.track_running_stats
        return _SyncBatchNormFunction.apply(
            input,
            self.weight,
            self.bias,
            self.running_mean if track else None,
            self.running_var if track else None,
            self.eps,
            factor,
            group,
            self.stats_protocol,
        )

    @classmethod
    def convert_sync_batchnorm(cls, module: torch.nn.Module, process_group=None):
        """Replace every batch norm (torch's or refimpl's, any of 1d/2d/3d/Sync) in
        ``module`` by this class, sharing its parameters and buffers (same objects, so
        values, ``requires_grad`` and device are kept) and its train/eval mode. Returns
        the module, or the new layer if ``module`` itself is a batch norm.

        >>> net = torch.nn.Sequential(torch.nn.Conv2d(1, 4, 3), torch.nn.BatchNorm2d(4))
        >>> type(SyncBatchNorm.convert_sync_batchnorm(net)[1]).__name__
        'SyncBatchNorm'
        """
        converted = module
        batch_norms = (torch.nn.modules.batchnorm._BatchNorm, _BatchNorm)
        if isinstance(module, batch_norms):
            converted = cls(
                module.num_features,
                module.eps,
                module.momentum,
                module.affine,
                module.track_running_stats,
                process_group,
                bias=module.bias is not None,
            )
            # Share, not copy: the optimizer and any other holder keep working.
            converted.weight, converted.bias = module.weight, module.bias
            converted.running_mean = module.running_mean
            converted.running_var = module.running_var
            converted.num_batches_tracked = module.num_batches_tracked
            converted.training = module.training
            if hasattr(module, "qconfig"):
                converted.qconfig = module.qconfig
        for name, child in module.named_children():
            converted.add_module(name, cls.convert_sync_batchnorm(child, process_group))
        return converted


# --------------------------------------------------------------------------- instruments


@contextlib.contextmanager
def record_collectives():
    """Log every ``all_gather`` / ``all_reduce`` this process makes while inside.

    Yields a list of dicts ``{"op", "sent_bytes", "received_bytes"}``: sent = the tensor
    this rank contributes, received = what lands in its output buffers.

    >>> with record_collectives() as log:
    ...     pass
    >>> log
    []
    """
    log: list[dict] = []
    real_gather, real_reduce = dist.all_gather, dist.all_reduce

    @functools.wraps(real_gather)
    def all_gather(tensor_list, tensor, *args, **kwargs):
        received = sum(t.numel() * t.element_size() for t in tensor_list)
        sent = tensor.numel() * tensor.element_size()
        log.append({"op": "all_gather", "sent_bytes": sent, "received_bytes": received})
        return real_gather(tensor_list, tensor, *args, **kwargs)

    @functools.wraps(real_reduce)
    def all_reduce(tensor, *args, **kwargs):
        size = tensor.numel() * tensor.element_size()
        log.append({"op": "all_reduce", "sent_bytes": size, "received_bytes": size})
        return real_reduce(tensor, *args, **kwargs)

    dist.all_gather, dist.all_reduce = all_gather, all_reduce
    try:
        yield log
    finally:
        dist.all_gather, dist.all_reduce = real_gather, real_reduce


# --------------------------------------------------------------------------- launcher


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago.

    Example:
        >>> 0 < free_port() < 65536
        True
    """
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _bootstrap(rank, fn, world_size, port, timeout, out_dir, args):
    """Body of each spawned worker: join the gloo group, run fn, leave its result."""
    torch.set_num_threads(1)  # several workers share few cores
    dist.init_process_group(
        "gloo",
        init_method=f"tcp://127.0.0.1:{port}",
        rank=rank,
        world_size=world_size,
        timeout=timedelta(seconds=timeout),
    )
    try:
        result = fn(rank, world_size, *args)
        with open(os.path.join(out_dir, f"{rank}.pkl"), "wb") as f:
            pickle.dump(result, f)
    finally:
        dist.destroy_process_group()


def launch(fn, world_size: int, *args, timeout: float = 60.0) -> list:
    """Run ``fn(rank, world_size, *args)`` in ``world_size`` fresh processes joined in a
    gloo group on 127.0.0.1; return their results in rank order.

    ``fn`` must be importable by name (defined in a module, not in a notebook), as
    ``torch.multiprocessing.spawn`` starts fresh interpreters. A worker's exception is
    raised here, with its traceback; ``timeout`` bounds every collective.

    Example:
        >>> import operator
        >>> launch(operator.add, 2)  # rank + world_size, from two processes
        [2, 3]
    """
    import torch.multiprocessing as mp

    with tempfile.TemporaryDirectory() as out_dir:
        mp.spawn(
            _bootstrap,
            args=(fn, world_size, free_port(), timeout, out_dir, args),
            nprocs=world_size,
            join=True,
        )
        results = []
        for rank in range(world_size):
            with open(os.path.join(out_dir, f"{rank}.pkl"), "rb") as f:
                results.append(pickle.load(f))
    return results
