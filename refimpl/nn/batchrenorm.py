"""Batch renorm modules (Ioffe 2017): ``BatchRenorm1d``, ``BatchRenorm2d``.

torch has no batch renormalization. These modules have batch norm's constructor
arguments, parameters, buffers and ``state_dict`` keys (a trained ``BatchNorm2d``'s state
loads into a ``BatchRenorm2d`` and back), plus the limits ``r_max`` and ``d_max``, an
optional warm-up ``schedule`` and an optional ``ghost_size``. The math is
:func:`refimpl.batch_renorm.batch_renorm`; :func:`convert_batch_renorm` swaps the batch
norms of a model for these.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor
from torch.nn import Module

from refimpl import core
from refimpl.batch_renorm import batch_renorm, check_limits, renorm_corrections
from refimpl.nn.batchnorm import BatchNorm1d, BatchNorm2d, _BatchNorm

__all__ = ["BatchRenorm1d", "BatchRenorm2d", "convert_batch_renorm"]


class _BatchRenorm(_BatchNorm):
    """Batch norm's module with r and d (see :mod:`refimpl.batch_renorm`).

    - ``r_max``, ``d_max``: the current limits (attributes, not state: a plain batch
      norm's ``state_dict`` loads as is);
    - ``schedule``: optional callable ``step -> (r_max, d_max)``, e.g.
      :class:`refimpl.batch_renorm.RenormSchedule`; before each training batch it sets
      the limits from ``num_batches_tracked`` (so a reloaded checkpoint resumes it);
    - ``ghost_size``: optional; training statistics, r and d per group of that many
      samples (as :class:`refimpl.ghost_norm.GhostBatchNorm`), the running statistics
      moved once per batch towards the groups' average.
    """

    def __init__(
        self,
        num_features: int,
        eps: float = 1e-5,
        momentum: float | None = 0.1,
        affine: bool = True,
        track_running_stats: bool = True,
        device=None,
        dtype=None,
        *,
        bias: bool = True,
        r_max: float = 3.0,
        d_max: float = 5.0,
        schedule=None,
        ghost_size: int | None = None,
    ) -> None:
        if not track_running_stats:
            raise ValueError(
                "batch renorm needs track_running_stats=True: r and d correct the batch "
                "statistics towards the running ones"
            )
        check_limits(r_max, d_max)
        if ghost_size is not None and ghost_size < 1:
            raise ValueError(f"ghost_size must be a positive integer, but got {ghost_size}")
        super().__init__(
            num_features, eps, momentum, affine, track_running_stats, device, dtype, bias=bias
        )
        self.r_max, self.d_max = float(r_max), float(d_max)
        self.schedule = schedule
        self.ghost_size = ghost_size

    def forward(self, input: Tensor) -> Tensor:
        self._check_input_dim(input)
        factor = 0.0 if self.momentum is None else self.momentum
        if self.training:
            if self.schedule is not None:  # the limits for this step, before counting it
                self.r_max, self.d_max = map(float, self.schedule(int(self.num_batches_tracked)))
            self.num_batches_tracked.add_(1)
            if self.momentum is None:
                factor = 1.0 / float(self.num_batches_tracked)
        if self.training and self.ghost_size is not None:
            return self._ghost_forward(input, factor)
        return batch_renorm(
            input,
            self.running_mean,
            self.running_var,
            self.weight,
            self.bias,
            self.training,
            factor,
            self.eps,
            self.r_max,
            self.d_max,
        )

    def _ghost_forward(self, input: Tensor, factor: float) -> Tensor:
        n, c, *rest = input.shape
        g = self.ghost_size
        if n % g:
            raise ValueError(f"ghost_size {g} must divide the batch size {n}")
        count = g * math.prod(rest)  # values per channel in one ghost batch
        if count == 1:
            raise ValueError("Expected more than 1 value per channel when training")
        check_limits(self.r_max, self.d_max)
        grouped = input.reshape(n // g, g, c, *rest)
        mean, var = core.moments(grouped, (1, *range(3, grouped.ndim)))
        stat_shape = (1, 1, c, *[1] * len(rest))
        r, d = renorm_corrections(
            mean,
            var,
            self.running_mean.reshape(stat_shape),
            self.running_var.reshape(stat_shape),
            self.eps,
            self.r_max,
            self.d_max,
        )
        out = (core.standardize(grouped, mean, var, self.eps) * r + d).reshape(input.shape)
        batch_mean = mean.mean(dim=0).reshape(-1)
        batch_var = (var * (count / (count - 1))).mean(dim=0).reshape(-1)
        core.assign_(self.running_mean, factor * batch_mean + (1 - factor) * self.running_mean)
        core.assign_(self.running_var, factor * batch_var + (1 - factor) * self.running_var)
        return core.affine(out, self.weight, self.bias, (1,))

    def extra_repr(self) -> str:
        text = super().extra_repr() + f", r_max={self.r_max}, d_max={self.d_max}"
        if self.schedule is not None:
            text += f", schedule={self.schedule}"
        if self.ghost_size is not None:
            text += f", ghost_size={self.ghost_size}"
        return text


class BatchRenorm1d(_BatchRenorm):
    """Batch renorm over (N, C) or (N, C, L). torch has no such layer.

    Example:

    >>> import torch
    >>> layer = BatchRenorm1d(3, r_max=1.0, d_max=0.0)  # limits 1 and 0: batch norm
    >>> x = torch.randn(8, 3)
    >>> bool(torch.allclose(layer(x), torch.nn.BatchNorm1d(3)(x), atol=1e-6))
    True
    >>> sorted(layer.state_dict())  # batch norm's keys: its state loads as is
    ['bias', 'num_batches_tracked', 'running_mean', 'running_var', 'weight']
    """

    expected_dims = (2, 3)


class BatchRenorm2d(_BatchRenorm):
    """Batch renorm over (N, C, H, W). torch has no such layer.

    Example:

    >>> import torch
    >>> from refimpl.batch_renorm import RenormSchedule
    >>> layer = BatchRenorm2d(3, schedule=RenormSchedule(2, 6, 4))
    >>> for _ in range(4):
    ...     _ = layer(torch.randn(2, 3, 4, 4))
    >>> (layer.r_max, layer.d_max)  # after 4 batches: the limits of the 4th (step 3)
    (1.5, 2.5)
    """

    expected_dims = (4,)


_TWINS = {
    torch.nn.BatchNorm1d: BatchRenorm1d,
    torch.nn.BatchNorm2d: BatchRenorm2d,
    BatchNorm1d: BatchRenorm1d,
    BatchNorm2d: BatchRenorm2d,
}


def convert_batch_renorm(module: Module, **kwargs) -> Module:
    """Replace every ``BatchNorm1d``/``BatchNorm2d`` (torch's or refimpl's) in ``module``
    by a ``BatchRenorm1d``/``2d`` with the same settings and state, as torch's
    ``SyncBatchNorm.convert_sync_batchnorm`` does. ``kwargs`` (``r_max``, ``d_max``,
    ``schedule``, ``ghost_size``) go to every new layer; returns the converted module.

    Example:

    >>> import torch
    >>> model = torch.nn.Sequential(torch.nn.Conv2d(1, 4, 3), torch.nn.BatchNorm2d(4))
    >>> layer = convert_batch_renorm(model, r_max=2.0)[1]
    >>> type(layer).__name__, layer.num_features, layer.r_max, layer.d_max
    ('BatchRenorm2d', 4, 2.0, 5.0)
    """
    twin = _TWINS.get(type(module))
    if twin is not None and module.track_running_stats:
        factory = {"device": module.running_mean.device, "dtype": module.running_mean.dtype}
        new = twin(
            module.num_features,
            module.eps,
            module.momentum,
            module.affine,
            True,
            bias=module.bias is not None,
            **factory,
            **kwargs,
        )
        new.load_state_dict(module.state_dict())
        new.train(module.training)
        return new
    for name, child in module.named_children():
        module.add_module(name, convert_batch_renorm(child, **kwargs))
    return module
