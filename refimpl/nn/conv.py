"""Weight-standardized convolution (Qiao et al. 2019): ``weight_standardize``, ``WSConv2d``.

Weight standardization normalizes the *weights*, not the activations: before every
forward pass each output filter :math:`\\mathbf W_o` (its ``in_channels / groups x kH x kW``
values) is shifted to zero mean and scaled to unit standard deviation,

.. math::

    \\hat{\\mathbf W}_o = \\frac{\\mathbf W_o - \\mu_o}{\\sqrt{\\sigma_o^2 + \\varepsilon}},

with :math:`\\mu_o` and the biased :math:`\\sigma_o^2` over that filter, the paper's
formula (their released PyTorch code divides by the unbiased standard deviation plus
``1e-5`` instead; the two differ by a factor near ``sqrt((m - 1) / m)``). The gradient
flows through the standardization to the raw weights. It uses no batch statistics, so it
combines with group norm at any batch size. torch has no such class.

The statistics come from :func:`refimpl.core.moments`, so :func:`weight_standardize`
runs on NumPy arrays and torch tensors alike.
"""

from __future__ import annotations

from torch import Tensor, nn

from refimpl import core

__all__ = ["weight_standardize", "WSConv2d"]


def weight_standardize(weight, eps: float = 1e-5):
    """Standardize each output filter of a conv or linear weight: zero mean, unit std.

    ``weight`` is ``(out_channels, in_channels / groups, *kernel)`` (or a linear layer's
    ``(out_features, in_features)``); the statistics are over every axis but the first,
    with the biased variance and ``eps`` under the square root. torch has no such
    function.

    Example:

    >>> import numpy as np
    >>> w = np.array([[1.0, 2.0, 3.0, 6.0], [10.0, 10.0, 10.0, 10.0]])  # two filters
    >>> weight_standardize(w).round(4).tolist()  # mean 3, variance 3.5; a constant
    [[-1.069, -0.5345, 0.0, 1.6036], [0.0, 0.0, 0.0, 0.0]]
    """
    if weight.ndim < 2:
        raise ValueError(
            f"weight_standardize expects a weight with at least 2 dimensions "
            f"(out_channels, ...), got {weight.ndim}D"
        )
    if eps < 0:
        raise ValueError(f"weight_standardize eps must be non-negative, but got {eps}")
    mean, var = core.moments(weight, tuple(range(1, weight.ndim)))
    return core.standardize(weight, mean, var, eps)


class WSConv2d(nn.Conv2d):
    """A ``torch.nn.Conv2d`` whose weight is standardized per output filter at every call.

    Same constructor as ``Conv2d`` plus ``eps``; the stored ``weight`` is the raw,
    learned one (``state_dict`` keys as ``Conv2d``'s), the convolution uses
    :func:`weight_standardize` of it. Input errors are ``Conv2d``'s (wrong rank, wrong
    channel count). torch has no such class.

    Example:

    >>> import torch
    >>> conv = WSConv2d(3, 4, kernel_size=3, padding=1, bias=False)
    >>> w = conv.standardized_weight()
    >>> bool(w.mean(dim=(1, 2, 3)).abs().max() < 1e-6)  # each filter: mean 0 ...
    True
    >>> [round(v, 2) for v in w.std(dim=(1, 2, 3), unbiased=False).tolist()]  # ... std 1
    [1.0, 1.0, 1.0, 1.0]
    >>> tuple(conv(torch.zeros(2, 3, 5, 5)).shape)
    (2, 4, 5, 5)
    """

    def __init__(self, *args, eps: float = 1e-5, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        if eps < 0:
            raise ValueError(f"WSConv2d eps must be non-negative, but got {eps}")
        self.eps = eps

    def standardized_weight(self) -> Tensor:
        """The weight the convolution uses: :func:`weight_standardize` of ``weight``.

        >>> conv = WSConv2d(1, 2, 2)
        >>> tuple(conv.standardized_weight().shape)
        (2, 1, 2, 2)
        """
        return weight_standardize(self.weight, self.eps)

    def forward(self, input: Tensor) -> Tensor:
        return self._conv_forward(input, self.standardized_weight(), self.bias)

    def extra_repr(self) -> str:
        return super().extra_repr() + f", eps={self.eps}"
