"""Norms over each sample's trailing dims, ``LayerNorm`` and ``RMSNorm``, and
``LayerNorm2d``: layer norm over the channels of each position of an image."""

from __future__ import annotations

import numbers

import torch
from torch import Tensor
from torch.nn import Module, Parameter, init

from refimpl import functional
from refimpl.nn.base import _register_affine, _reset_affine

__all__ = ["LayerNorm", "RMSNorm", "LayerNorm2d"]


def _as_shape(normalized_shape) -> tuple[int, ...]:
    if isinstance(normalized_shape, numbers.Integral):
        return (int(normalized_shape),)
    return tuple(normalized_shape)


class LayerNorm(Module):
    """Layer norm over the trailing ``normalized_shape`` dims of each sample.

    Example:

    >>> import torch
    >>> ln = LayerNorm(8)  # (N, T, D): one statistic per token
    >>> y = ln(torch.arange(80.0).reshape(2, 5, 8))
    >>> bool(y.mean(dim=-1).abs().max() < 1e-6), tuple(ln.weight.shape)
    (True, (8,))
    """

    def __init__(
        self,
        normalized_shape,
        eps: float = 1e-5,
        elementwise_affine: bool = True,
        bias: bool = True,
        device=None,
        dtype=None,
    ) -> None:
        super().__init__()
        factory = {"device": device, "dtype": dtype}
        self.normalized_shape = _as_shape(normalized_shape)
        self.eps = eps
        self.elementwise_affine = elementwise_affine
        _register_affine(self, self.normalized_shape, elementwise_affine, bias, factory)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        _reset_affine(self)

    def forward(self, input: Tensor) -> Tensor:
        return functional.layer_norm(input, self.normalized_shape, self.weight, self.bias, self.eps)

    def extra_repr(self) -> str:
        return (
            f"{self.normalized_shape}, eps={self.eps}, "
            f"elementwise_affine={self.elementwise_affine}, bias={self.bias is not None}"
        )


class RMSNorm(Module):
    """RMS norm: divide by the root mean square over the trailing dims, then scale.

    Example:

    >>> import torch
    >>> y = RMSNorm(2)(torch.tensor([[3.0, 4.0]]))  # 3 and 4 over sqrt(12.5)
    >>> [round(v, 4) for v in y[0].tolist()]
    [0.8485, 1.1314]
    """

    def __init__(
        self,
        normalized_shape,
        eps: float | None = None,
        elementwise_affine: bool = True,
        device=None,
        dtype=None,
    ) -> None:
        super().__init__()
        self.normalized_shape = _as_shape(normalized_shape)
        self.eps = eps
        self.elementwise_affine = elementwise_affine
        if elementwise_affine:
            self.weight = Parameter(torch.empty(self.normalized_shape, device=device, dtype=dtype))
        else:
            self.register_parameter("weight", None)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        if self.elementwise_affine:
            init.ones_(self.weight)

    def forward(self, x: Tensor) -> Tensor:
        return functional.rms_norm(x, self.normalized_shape, self.weight, self.eps)

    def extra_repr(self) -> str:
        return (
            f"{self.normalized_shape}, eps={self.eps}, elementwise_affine={self.elementwise_affine}"
        )


class LayerNorm2d(LayerNorm):
    """Layer norm over the C channels of every pixel of an (N, C, H, W) input.

    torch.nn has no such class. It is the LayerNorm of ConvNeXt (Liu et al., 2022)
    (its ``LayerNorm(..., data_format="channels_first")``), timm's ``LayerNorm2d`` and
    torchvision's ``convnext.LayerNorm2d``: ``torch.nn.LayerNorm(C)`` applied to the
    channels-last (N, H, W, C) view, one mean and variance per sample and position.
    It is *not* ``GroupNorm(1, C)``, which normalizes each sample over (C, H, W)
    together. Parameters and ``state_dict`` keys are those of ``torch.nn.LayerNorm(C)``
    (``weight`` and ``bias`` of shape (C,)), so weights load from either.

    eps defaults to 1e-6, ConvNeXt's and timm's value (``LayerNorm``'s is 1e-5).

    Example:

    >>> import torch
    >>> ln = LayerNorm2d(3)
    >>> y = ln(torch.arange(24.0).reshape(1, 3, 2, 4))  # (N, C, H, W)
    >>> bool(y.mean(dim=1).abs().max() < 1e-6), tuple(ln.weight.shape)  # per pixel
    (True, (3,))
    """

    def __init__(
        self,
        num_channels: int,
        eps: float = 1e-6,
        elementwise_affine: bool = True,
        bias: bool = True,
        device=None,
        dtype=None,
    ) -> None:
        super().__init__(num_channels, eps, elementwise_affine, bias, device, dtype)

    def forward(self, input: Tensor) -> Tensor:
        if input.dim() != 4:  # torch's 2d modules' check (BatchNorm2d, InstanceNorm2d)
            raise ValueError(f"expected 4D input (got {input.dim()}D input)")
        (channels,) = self.normalized_shape
        if input.shape[1] != channels:
            raise RuntimeError(
                f"Given normalized_shape=[{channels}], expected input with shape "
                f"[N, {channels}, H, W], but got input of size{list(input.shape)}"
            )
        return functional.layer_norm_2d(input, self.weight, self.bias, self.eps)
