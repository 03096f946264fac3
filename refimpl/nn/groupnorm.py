"""Group norm: ``GroupNorm``."""

from __future__ import annotations

from torch import Tensor
from torch.nn import Module

from refimpl import functional
from refimpl.nn.base import _register_affine, _reset_affine

__all__ = ["GroupNorm"]


class GroupNorm(Module):
    """Group norm: each sample's channels split into groups, one statistic per group.

    Example:

    >>> import torch
    >>> gn = GroupNorm(2, 4)
    >>> y = gn(torch.tensor([[1.0, 3.0, 10.0, 30.0]]))  # groups {0, 1} and {2, 3}
    >>> [round(v, 3) for v in y[0].tolist()]
    [-1.0, 1.0, -1.0, 1.0]
    """

    def __init__(
        self,
        num_groups: int,
        num_channels: int,
        eps: float = 1e-5,
        affine: bool = True,
        device=None,
        dtype=None,
        *,
        bias: bool = True,
    ) -> None:
        super().__init__()
        if num_channels % num_groups != 0:
            raise ValueError(
                f"num_channels ({num_channels}) must be divisible by num_groups ({num_groups})"
            )
        factory = {"device": device, "dtype": dtype}
        self.num_groups = num_groups
        self.num_channels = num_channels
        self.eps = eps
        self.affine = affine
        _register_affine(self, num_channels, affine, bias, factory)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        _reset_affine(self)

    def forward(self, input: Tensor) -> Tensor:
        return functional.group_norm(input, self.num_groups, self.weight, self.bias, self.eps)

    def extra_repr(self) -> str:
        return (
            f"{self.num_groups}, {self.num_channels}, eps={self.eps}, affine={self.affine}, "
            f"bias={self.bias is not None}"
        )
