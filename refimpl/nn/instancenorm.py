"""Instance norm modules: ``InstanceNorm1d/2d/3d`` (torch.nn.modules.instancenorm)."""

from __future__ import annotations

import warnings

from torch import Tensor

from refimpl import functional
from refimpl.nn.base import _NormBase

__all__ = ["InstanceNorm1d", "InstanceNorm2d", "InstanceNorm3d"]


class _InstanceNorm(_NormBase):
    spatial_dims = 0

    def __init__(
        self,
        num_features: int,
        eps: float = 1e-5,
        momentum: float | None = 0.1,
        affine: bool = False,
        track_running_stats: bool = False,
        device=None,
        dtype=None,
        *,
        bias: bool = True,
    ) -> None:
        super().__init__(
            num_features, eps, momentum, affine, track_running_stats, device, dtype, bias=bias
        )

    def _check_input_dim(self, input: Tensor) -> None:
        unbatched = self.spatial_dims + 1
        if input.dim() not in (unbatched, unbatched + 1):
            raise ValueError(
                f"expected {unbatched}D or {unbatched + 1}D input (got {input.dim()}D input)"
            )

    def forward(self, input: Tensor) -> Tensor:
        self._check_input_dim(input)
        unbatched = input.dim() == self.spatial_dims + 1
        feature_dim = 0 if unbatched else 1
        if input.size(feature_dim) != self.num_features:
            if self.affine:
                raise ValueError(
                    f"expected input's size at dim={feature_dim} to match num_features"
                    f" ({self.num_features}), but got: {input.size(feature_dim)}."
                )
            warnings.warn(
                f"input's size at dim={feature_dim} does not match num_features. "
                "You can silence this warning by not passing in num_features, "
                "which is not used because affine=False",
                stacklevel=2,
            )
        batched = input.unsqueeze(0) if unbatched else input
        # Unlike batch norm: no num_batches_tracked update, and momentum None means 0.
        output = functional.instance_norm(
            batched,
            self.running_mean,
            self.running_var,
            self.weight,
            self.bias,
            self.training or not self.track_running_stats,
            self.momentum if self.momentum is not None else 0.0,
            self.eps,
        )
        return output.squeeze(0) if unbatched else output


class InstanceNorm1d(_InstanceNorm):
    """Instance norm over (N, C, L) or (C, L): one statistic per sample and channel.

    Example:

    >>> import torch
    >>> norm = InstanceNorm1d(3)
    >>> norm
    InstanceNorm1d(3, eps=1e-05, momentum=0.1, affine=False, bias=False, track_running_stats=False)
    >>> y = norm(torch.arange(30.0).reshape(2, 3, 5))
    >>> bool(y.mean(dim=2).abs().max() < 1e-6)  # each (sample, channel): mean 0
    True
    """

    spatial_dims = 1


class InstanceNorm2d(_InstanceNorm):
    """Instance norm over (N, C, H, W) or (C, H, W): one statistic per sample and channel.

    Example:

    >>> import torch
    >>> x = torch.arange(48.0).reshape(3, 4, 4)  # unbatched (C, H, W) works too
    >>> tuple(InstanceNorm2d(3)(x).shape)
    (3, 4, 4)
    """

    spatial_dims = 2


class InstanceNorm3d(_InstanceNorm):
    """Instance norm over (N, C, D, H, W) or (C, D, H, W).

    Example:

    >>> import torch
    >>> y = InstanceNorm3d(2, affine=True)(torch.arange(32.0).reshape(1, 2, 2, 2, 4))
    >>> bool(y.mean(dim=(2, 3, 4)).abs().max() < 1e-6)
    True
    """

    spatial_dims = 3
