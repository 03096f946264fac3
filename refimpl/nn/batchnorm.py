"""Batch norm modules: ``BatchNorm1d/2d/3d`` (torch.nn.modules.batchnorm).

``_BatchNorm`` is the base that refimpl's other batch norms (``SyncBatchNorm`` in
:mod:`refimpl.distributed`, ``GhostBatchNorm``) build on.
"""

from __future__ import annotations

from torch import Tensor

from refimpl import functional
from refimpl.nn.base import _NormBase

__all__ = ["BatchNorm1d", "BatchNorm2d", "BatchNorm3d"]


class _BatchNorm(_NormBase):
    expected_dims: tuple[int, ...] = ()

    def _check_input_dim(self, input: Tensor) -> None:
        if input.dim() not in self.expected_dims:
            wanted = " or ".join(f"{d}D" for d in self.expected_dims)
            raise ValueError(f"expected {wanted} input (got {input.dim()}D input)")

    def forward(self, input: Tensor) -> Tensor:
        self._check_input_dim(input)
        # How much this batch counts in the running averages (torch's _BatchNorm.forward):
        # momentum, or 1 / batches-seen (a cumulative average) when momentum is None.
        factor = 0.0 if self.momentum is None else self.momentum
        if self.training and self.track_running_stats:
            self.num_batches_tracked.add_(1)
            if self.momentum is None:
                factor = 1.0 / float(self.num_batches_tracked)
        # Batch statistics in training, and in eval when there are no running ones.
        use_batch_stats = self.training or self.running_mean is None
        # Buffers are passed when they are to be updated or used.
        pass_buffers = not self.training or self.track_running_stats
        return functional.batch_norm(
            input,
            self.running_mean if pass_buffers else None,
            self.running_var if pass_buffers else None,
            self.weight,
            self.bias,
            use_batch_stats,
            factor,
            self.eps,
        )


class BatchNorm1d(_BatchNorm):
    """Batch norm over (N, C) or (N, C, L): one mean and variance per channel.

    Example:

    >>> import torch
    >>> bn = BatchNorm1d(3)
    >>> y = bn(torch.arange(24.0).reshape(8, 3))
    >>> bool(y.mean(dim=0).abs().max() < 1e-6), bn.num_batches_tracked.item()
    (True, 1)
    >>> sorted(bn.state_dict())
    ['bias', 'num_batches_tracked', 'running_mean', 'running_var', 'weight']
    >>> bn.load_state_dict(torch.nn.BatchNorm1d(3).state_dict())  # torch's state loads as is
    <All keys matched successfully>
    """

    expected_dims = (2, 3)


class BatchNorm2d(_BatchNorm):
    """Batch norm over (N, C, H, W): one mean and variance per channel.

    Example:

    >>> import torch
    >>> bn = BatchNorm2d(3)
    >>> bn
    BatchNorm2d(3, eps=1e-05, momentum=0.1, affine=True, bias=True, track_running_stats=True)
    >>> y = bn(torch.arange(96.0).reshape(2, 3, 4, 4))
    >>> bool(y.mean(dim=(0, 2, 3)).abs().max() < 1e-6)  # each channel: mean 0
    True
    """

    expected_dims = (4,)


class BatchNorm3d(_BatchNorm):
    """Batch norm over (N, C, D, H, W): one mean and variance per channel.

    Example:

    >>> import torch
    >>> bn = BatchNorm3d(3).eval()  # evaluation: the running statistics (0 and 1 at first)
    >>> x = torch.arange(48.0).reshape(2, 3, 2, 2, 2)
    >>> bool(torch.allclose(bn(x), x / (1 + 1e-5) ** 0.5))
    True
    """

    expected_dims = (5,)
