"""Dynamic Tanh (DyT): ``weight * tanh(alpha * x) + bias``, a drop-in for layer norm.

Zhu, Chen, He, LeCun and Liu (2025), "Transformers without Normalization", replace each
layer norm of a transformer by this elementwise map: a learnable *scalar* ``alpha``
squashes the input (no statistics are computed), then a per-feature affine follows, as in
layer norm. torch has no such module; the name ``DynamicTanh`` and the initial value
``alpha_init`` (default 0.5) follow the paper's reference code, the rest (a trailing
``normalized_shape``, ``elementwise_affine``, ``bias``) follows ``torch.nn.LayerNorm``.
"""

from __future__ import annotations

import math
import numbers

import torch
from torch import Tensor
from torch.nn import Module, Parameter, init

from refimpl.nn.base import _register_affine, _reset_affine
from refimpl.nn.layernorm import _as_shape

__all__ = ["DynamicTanh"]


class DynamicTanh(Module):
    """``weight * tanh(alpha * x) + bias`` over the trailing ``normalized_shape`` dims.

    ``alpha`` is one learnable scalar (shape ``(1,)``), initialised to ``alpha_init``;
    ``weight`` (ones) and ``bias`` (zeros) have ``normalized_shape``, as layer norm's.
    Not in torch (Zhu et al. 2025); the constructor mirrors ``torch.nn.LayerNorm``'s,
    with ``alpha_init`` in place of ``eps``. No statistics: each value is mapped on its own,
    so the output does not depend on the other features of the token.

    >>> import torch
    >>> dyt = DynamicTanh(4, alpha_init=0.5)
    >>> x = torch.tensor([[-4.0, -1.0, 0.0, 2.0]])
    >>> [round(v, 4) for v in dyt(x)[0].tolist()]  # tanh(x / 2)
    [-0.964, -0.4621, 0.0, 0.7616]
    >>> sorted(name for name, _ in dyt.named_parameters())
    ['alpha', 'bias', 'weight']
    """

    def __init__(
        self,
        normalized_shape,
        alpha_init: float = 0.5,
        elementwise_affine: bool = True,
        bias: bool = True,
        device=None,
        dtype=None,
    ) -> None:
        super().__init__()
        if not isinstance(alpha_init, numbers.Real) or not math.isfinite(alpha_init):
            raise ValueError(f"alpha_init must be a finite number, got {alpha_init!r}")
        factory = {"device": device, "dtype": dtype}
        self.normalized_shape = _as_shape(normalized_shape)
        if not self.normalized_shape or min(self.normalized_shape) < 1:
            raise ValueError(
                f"normalized_shape must be non-empty and positive, got {self.normalized_shape}"
            )
        self.alpha_init = float(alpha_init)
        self.elementwise_affine = elementwise_affine
        self.alpha = Parameter(torch.empty(1, **factory))
        _register_affine(self, self.normalized_shape, elementwise_affine, bias, factory)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        init.constant_(self.alpha, self.alpha_init)
        _reset_affine(self)

    def forward(self, input: Tensor) -> Tensor:
        k = len(self.normalized_shape)
        if input.ndim < k or tuple(input.shape[input.ndim - k :]) != self.normalized_shape:
            # the message layer norm gives for the same mistake
            raise RuntimeError(
                f"Given normalized_shape={list(self.normalized_shape)}, expected input with "
                f"shape [*, {', '.join(map(str, self.normalized_shape))}], "
                f"but got input of size{list(input.shape)}"
            )
        y = torch.tanh(self.alpha * input)
        if self.weight is not None:
            y = y * self.weight
        if self.bias is not None:
            y = y + self.bias
        return y

    def extra_repr(self) -> str:
        return (
            f"{self.normalized_shape}, alpha_init={self.alpha_init}, "
            f"elementwise_affine={self.elementwise_affine}, bias={self.bias is not None}"
        )
