"""Ghost batch norm: batch statistics over groups of ``ghost_size`` samples.

The batch a BN layer normalizes over need not be the batch SGD steps on: splitting each
training batch into "ghost" batches (Hoffer et al. 2017) sets the *normalization* batch
size on its own, which is what BN's train/test inconsistency depends on (Wu & Johnson
2021). Training with ghost size g behaves, for BN, like training with batches of g,
while the optimizer still sees the whole batch. In eval mode it is plain BN.
"""

from __future__ import annotations

import math

import torch

from refimpl import core
from refimpl.nn import _BatchNorm

__all__ = ["GhostBatchNorm"]


class GhostBatchNorm(_BatchNorm):
    """Batch norm (any of 1d, 2d, 3d input) whose training statistics come from groups of
    ``ghost_size`` samples.

    The running statistics move once per training batch, towards the average over its
    ghost batches of their means and unbiased variances. ``ghost_size`` must divide the
    batch size; ``ghost_size`` equal to the batch size is ``BatchNorm2d``.

    >>> from refimpl.nn import BatchNorm2d
    >>> layer = GhostBatchNorm(3, ghost_size=2)
    >>> x = torch.randn(8, 3, 4, 4)
    >>> y = layer(x)
    >>> torch.allclose(y[:2], BatchNorm2d(3)(x[:2]), atol=1e-6)
    True
    """

    expected_dims = (2, 3, 4, 5)

    def __init__(self, num_features: int, ghost_size: int, **kwargs) -> None:
        super().__init__(num_features, **kwargs)
        self.ghost_size = ghost_size

    def forward(self, input: torch.Tensor) -> torch.Tensor:
        if not self.training:
            return super().forward(input)
        self._check_input_dim(input)
        n, c, *rest = input.shape
        g = self.ghost_size
        if n % g:
            raise ValueError(f"ghost_size {g} must divide the batch size {n}")
        count = g * math.prod(rest)  # values per channel in one ghost batch
        if count == 1:
            raise ValueError("Expected more than 1 value per channel when training")
        grouped = input.reshape(n // g, g, c, *rest)
        mean, var = core.moments(grouped, (1, *range(3, grouped.ndim)))
        if self.track_running_stats:
            self.num_batches_tracked.add_(1)
            m = 1.0 / float(self.num_batches_tracked) if self.momentum is None else self.momentum
            batch_mean = mean.mean(dim=0).reshape(-1)
            batch_var = (var * (count / (count - 1))).mean(dim=0).reshape(-1)
            core.assign_(self.running_mean, m * batch_mean + (1 - m) * self.running_mean)
            core.assign_(self.running_var, m * batch_var + (1 - m) * self.running_var)
        out = core.standardize(grouped, mean, var, self.eps).reshape(input.shape)
        return core.affine(out, self.weight, self.bias, (1,))

    def extra_repr(self) -> str:
        return super().extra_repr() + f", ghost_size={self.ghost_size}"
