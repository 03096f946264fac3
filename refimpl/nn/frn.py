"""Filter Response Normalization and the Thresholded Linear Unit (Singh & Krishnan 2020).

FRN divides each channel of each sample by the root mean square of its own responses,

.. math::

    \\nu^2 = \\frac{1}{HW} \\sum_{h, w} x_{nchw}^2, \\qquad
    y = \\gamma \\frac{x}{\\sqrt{\\nu^2 + \\varepsilon}} + \\beta,

with no mean subtracted and no statistic shared between samples, so nothing depends on
the batch. Because the output is not centred, the paper pairs it with TLU,
:math:`\\max(y, \\tau)` with a learned per-channel threshold :math:`\\tau`, in place of
ReLU. With ``learnable_eps`` the constant becomes
:math:`\\varepsilon = \\varepsilon_{\\min} + |\\varepsilon_l|`, the paper's remedy for
small or 1 x 1 feature maps, where :math:`\\nu^2` is a single square.

:func:`filter_response_norm` is :func:`refimpl.core.mean_square` and
:func:`refimpl.core.normalize` over the spatial axes, RMS norm's statistic per sample and
channel, so it runs on NumPy arrays and torch tensors. torch has no such functions or
classes.
"""

from __future__ import annotations

import numbers

import torch
from array_api_compat import array_namespace
from torch import Tensor
from torch.nn import Module, Parameter, init

from refimpl import core
from refimpl.nn.base import _register_affine, _reset_affine

__all__ = ["filter_response_norm", "tlu", "FilterResponseNorm2d", "TLU"]


def _check_channels(shape, params: dict) -> None:
    """One value per channel, with torch's group-norm message for a wrong count."""
    for name, param in params.items():
        if param is not None and (param.ndim != 1 or param.shape[0] != shape[1]):
            raise RuntimeError(
                f"Expected {name} to be a vector of size equal to the number of channels in "
                f"input, but got {name} of shape {list(param.shape)} and input of shape "
                f"{list(shape)}"
            )


def filter_response_norm(input, weight=None, bias=None, eps=1e-6):
    """Divide each (sample, channel) map by its root mean square; then the affine.

    ``input`` is ``(N, C, *spatial)`` with at least one spatial axis; ``eps`` a positive
    number or one value per channel (a learned epsilon, already made positive). No mean
    is subtracted and no statistic crosses samples. torch has no such function.

    Example:

    >>> import numpy as np
    >>> x = np.array([[[[3.0, 4.0], [0.0, 0.0]]]])  # (1, 1, 2, 2): mean square 25/4
    >>> filter_response_norm(x, eps=1e-6).round(4).tolist()
    [[[[1.2, 1.6], [0.0, 0.0]]]]
    """
    shape = tuple(input.shape)
    if len(shape) < 3:
        raise RuntimeError(
            "Expected at least 3 dimensions (N, C, *spatial) for input tensor but received "
            f"{len(shape)}"
        )
    xp = array_namespace(input)
    if isinstance(eps, numbers.Real):
        if not eps > 0:
            raise ValueError(f"filter_response_norm eps must be positive, but got {eps}")
    else:
        _check_channels(shape, {"eps": eps})
        eps = xp.reshape(eps, core.param_shape(len(shape), shape, (1,)))
    _check_channels(shape, {"weight": weight, "bias": bias})
    nu2 = core.mean_square(input, tuple(range(2, len(shape))))
    return core.normalize(input, None, nu2, eps, weight, bias, (1,))


def tlu(input, tau):
    """The thresholded linear unit ``max(input, tau)``, one threshold per channel.

    ``tau = 0`` is ReLU; a learned ``tau`` lets FRN's uncentred output keep units that
    a fixed threshold at 0 would silence. torch has no such function.

    Example:

    >>> import numpy as np
    >>> tlu(np.array([[-2.0, 0.5], [1.0, -1.0]]), tau=np.array([-1.0, 0.0])).tolist()
    [[-1.0, 0.5], [1.0, 0.0]]
    """
    if input.ndim < 2:
        raise RuntimeError(
            f"Expected at least 2 dimensions (N, C, ...) for input tensor but received "
            f"{input.ndim}"
        )
    _check_channels(tuple(input.shape), {"tau": tau})
    xp = array_namespace(input)
    return xp.maximum(input, xp.reshape(tau, core.param_shape(input.ndim, input.shape, (1,))))


class FilterResponseNorm2d(Module):
    """FRN for ``(N, C, H, W)`` feature maps: ``weight`` (gamma) and ``bias`` (beta) per
    channel, and with ``learnable_eps`` a per-channel ``eps_l`` (``eps + |eps_l|`` is the
    constant; refimpl starts ``eps_l`` at ``1e-4``). Follow it with :class:`TLU`. The
    same in training and eval: no running statistics. torch has no such class.

    Example:

    >>> frn = FilterResponseNorm2d(2)
    >>> x = torch.tensor([[[[3.0, 4.0]], [[1.0, -1.0]]]])  # (1, 2, 1, 2)
    >>> [round(v, 4) for v in frn(x).flatten().tolist()]
    [0.8485, 1.1314, 1.0, -1.0]
    >>> sorted(FilterResponseNorm2d(2, learnable_eps=True).state_dict())
    ['bias', 'eps_l', 'weight']
    """

    def __init__(
        self,
        num_features: int,
        eps: float = 1e-6,
        learnable_eps: bool = False,
        device=None,
        dtype=None,
    ) -> None:
        super().__init__()
        if not eps > 0:
            raise ValueError(f"FilterResponseNorm2d eps must be positive, but got {eps}")
        factory = {"device": device, "dtype": dtype}
        self.num_features = num_features
        self.eps = eps
        self.learnable_eps = learnable_eps
        _register_affine(self, num_features, True, True, factory)
        eps_l = Parameter(torch.empty(num_features, **factory)) if learnable_eps else None
        self.register_parameter("eps_l", eps_l)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        _reset_affine(self)
        if self.eps_l is not None:
            init.constant_(self.eps_l, 1e-4)

    def forward(self, input: Tensor) -> Tensor:
        if input.dim() != 4:
            raise ValueError(f"expected 4D input (got {input.dim()}D input)")
        eps = self.eps if self.eps_l is None else self.eps + self.eps_l.abs()
        return filter_response_norm(input, self.weight, self.bias, eps)

    def extra_repr(self) -> str:
        return f"{self.num_features}, eps={self.eps}, learnable_eps={self.learnable_eps}"


class TLU(Module):
    """``max(x, tau)`` with a learned threshold ``tau`` per channel (initialized to 0, so
    it starts as ReLU). Any input ``(N, C, *)``. torch has no such class.

    Example:

    >>> act = TLU(2)
    >>> with torch.no_grad():
    ...     _ = act.tau.copy_(torch.tensor([-1.0, 0.5]))
    >>> act(torch.tensor([[-3.0, 0.0]])).tolist()
    [[-1.0, 0.5]]
    """

    def __init__(self, num_features: int, device=None, dtype=None) -> None:
        super().__init__()
        self.num_features = num_features
        self.tau = Parameter(torch.empty(num_features, device=device, dtype=dtype))
        self.reset_parameters()

    def reset_parameters(self) -> None:
        init.zeros_(self.tau)

    def forward(self, input: Tensor) -> Tensor:
        return tlu(input, self.tau)

    def extra_repr(self) -> str:
        return f"{self.num_features}"
